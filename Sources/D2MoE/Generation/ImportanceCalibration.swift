extension ExpertImportance {
    /// Each routed expert's importance on calibration text: the text's first `tokens` tokens run
    /// through the model in windows of the context length (capped at 512), the routers' gate
    /// weights summed per expert. The model's own routing hook is set aside meanwhile.
    public static func measure(engine: Engine, text: String, tokens: Int) throws -> ExpertImportance {
        let model = engine.model
        guard model.info.moeLayerCount > 0 else { throw ModelError("\(engine.source): the model has no routed experts to calibrate") }
        let ids = Array(engine.tokenizer.encode(text, addSpecial: false, parseSpecial: false).prefix(tokens))
        guard !ids.isEmpty else { throw ModelError("the calibration text has no tokens") }
        let importance = ExpertImportance(moeLayers: model.info.moeLayerCount, experts: model.info.expertCount)
        let saved = model.routingHook
        model.routingHook = importance
        defer { model.routingHook = saved }
        let window = min(engine.contextLength, 512)
        var start = 0
        while start < ids.count {
            let chunk = ids[start..<min(start + window, ids.count)]
            let batch = chunk.enumerated().map { BatchToken(sequence: 0, position: $0.offset, token: $0.element, wantsLogits: $0.offset == chunk.count - 1) }
            _ = try model.forward(batch, caches: [model.makeCache(capacity: window)])
            start += window
        }
        return importance
    }
}
