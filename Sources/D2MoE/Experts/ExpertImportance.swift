/// How much each expert matters on calibration data, EdgeMoE's measure for its static bit-widths:
/// the sum over routed tokens of the expert's gate weight (its share of the token's output), per
/// MoE layer. Attach as a model's `routingHook` while it runs calibration text, or build from a
/// recorded trace.
public final class ExpertImportance: RoutingHook, @unchecked Sendable {
    /// importance[moeLayer][expert]
    public private(set) var importance: [[Double]]
    /// Tokens seen per MoE layer.
    public private(set) var tokens: [Int]

    public init(moeLayers: Int, experts: Int) {
        importance = Array(repeating: Array(repeating: 0, count: experts), count: moeLayers)
        tokens = Array(repeating: 0, count: moeLayers)
    }

    public func routed(moeLayer: Int, batch: [BatchToken], routes: inout ExpertRoutes, nExperts: Int) throws {
        guard moeLayer < importance.count, nExperts == importance[moeLayer].count else {
            throw ModelError("importance counts \(importance.count) MoE layers of \(importance.first?.count ?? 0) experts, the model routed layer \(moeLayer) over \(nExperts)")
        }
        add(layer: moeLayer, experts: routes.experts, weights: routes.weights, topK: routes.topK)
    }

    /// The trace's routes (weights where it has them, otherwise each chosen expert counts 1/k),
    /// its layer l standing for the model's MoE layer l as replay maps them.
    public convenience init(trace: RoutingTrace, moeLayers: Int, experts: Int) throws {
        guard trace.expertCount <= experts else {
            throw ModelError("\(trace.source): the trace names expert \(trace.expertCount - 1), the model has \(experts) per layer")
        }
        guard trace.layerCount >= moeLayers else {
            throw ModelError("\(trace.source): the trace has \(trace.layerCount) MoE layers, the model \(moeLayers)")
        }
        self.init(moeLayers: moeLayers, experts: experts)
        for token in trace.tokens {
            for l in 0..<moeLayers {
                guard let r = token[l] else { continue }
                add(layer: l, experts: r.experts, weights: r.weights ?? Array(repeating: 1 / Float(r.experts.count), count: r.experts.count),
                    topK: r.experts.count)
            }
        }
    }

    private func add(layer: Int, experts: [Int32], weights: [Float], topK: Int) {
        for i in experts.indices { importance[layer][Int(experts[i])] += Double(weights[i]) }
        tokens[layer] += experts.count / max(topK, 1)
    }
}
