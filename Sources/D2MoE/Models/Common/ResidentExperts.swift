import D2MoEKernels

/// Every routed expert held in memory as dense matrices, as the model file loads them: the
/// default backend, and the reference the budgeted expert pool (layer 4) is checked against.
public final class ResidentExperts: ObservableExpertBackend, @unchecked Sendable {
    /// [moeLayer][expert]
    let experts: [[FeedForward]]
    let hidden: Int
    private let scratch = Scratch()
    /// Per-token bit-widths (`TransformerModel.useBitPolicy`): the policy and every expert at each
    /// level, [moeLayer][expert][level − 1].
    var mixed: (routing: BitRouting, experts: [[[FeedForward]]])?
    private let groups = LevelGroups()

    init(experts: [[FeedForward]], hidden: Int) {
        self.experts = experts
        self.hidden = hidden
    }

    /// Bytes of expert weights held.
    public var byteCount: Int {
        experts.joined().reduce(0) { $0 + $1.gate.byteCount + $1.up.byteCount + $1.down.byteCount }
    }

    public func compute(layer: Int, input x: UnsafePointer<Float>, routes: ExpertRoutes,
                        output out: UnsafeMutablePointer<Float>) throws {
        try compute(layer: layer, input: x, routes: routes, output: out, observe: nil)
    }

    func compute(layer: Int, input x: UnsafePointer<Float>, routes: ExpertRoutes, output out: UnsafeMutablePointer<Float>,
                 observe: ExpertObservation?) throws {
        if let mixed, observe == nil { return computeMixed(layer: layer, x: x, routes: routes, mixed: mixed, out: out) }
        let layerExperts = experts[layer]
        let tokens = routes.tokens
        // Group the (token, slot) pairs by expert so each expert runs once on all its tokens.
        var members = [[Int]](repeating: [], count: layerExperts.count)
        for i in 0..<(tokens * routes.topK) { members[Int(routes.experts[i])].append(i) }
        for (e, slots) in members.enumerated() where !slots.isEmpty {
            let expert = layerExperts[e]
            let n = slots.count
            let gathered = scratch.floats(.gathered, n * hidden)
            for (row, slot) in slots.enumerated() {
                (gathered + row * hidden).update(from: x + (slot / routes.topK) * hidden, count: hidden)
            }
            let y = scratch.floats(.expertOut, n * hidden)
            let gate = scratch.floats(.expertGate, n * expert.intermediate)
            expert(gathered, tokens: n, y, gateBuffer: gate, upBuffer: scratch.floats(.expertUp, n * expert.intermediate))
            observe?(e, gathered, gate, n, expert.intermediate, slots.map { $0 / routes.topK }, slots.map { routes.weights[$0] })
            for (row, slot) in slots.enumerated() {
                Kernels.axpy(routes.weights[slot], y + row * hidden, out + (slot / routes.topK) * hidden, n: hidden)
            }
        }
    }

    /// Each (token, expert) at the level the policy gives it; sums per token in expert-id order
    /// as the uniform path does.
    private func computeMixed(layer: Int, x: UnsafePointer<Float>, routes: ExpertRoutes,
                              mixed: (routing: BitRouting, experts: [[[FeedForward]]]), out: UnsafeMutablePointer<Float>) {
        let layerExperts = mixed.experts[layer]
        let levels = mixed.routing.levels(layer: layer, x: x, hidden: hidden, routes: routes, nExperts: layerExperts.count)
        var members = [[Int]](repeating: [], count: layerExperts.count)
        for i in 0..<routes.experts.count { members[Int(routes.experts[i])].append(i) }
        for (e, slots) in members.enumerated() where !slots.isEmpty {
            let rows = slots.map { $0 / routes.topK }
            var outputs = [[Float]](repeating: [], count: slots.count)
            groups.run(layerExperts[e], rows: rows, levels: slots.map { levels[$0] }, x: x, hidden: hidden) { i, y in
                outputs[i] = Array(UnsafeBufferPointer(start: y, count: hidden))
            }
            for (i, slot) in slots.enumerated() {
                outputs[i].withUnsafeBufferPointer { Kernels.axpy(routes.weights[slot], $0.baseAddress!, out + rows[i] * hidden, n: hidden) }
            }
        }
    }
}
