import Foundation

/// Recorded expert routing: for each traced token, the experts each MoE layer chose (and their
/// gate weights where the trace has them), to drive expert selection without the model's own
/// routers (`d2moe bench --trace`).
///
/// Three formats are read:
/// - d2moe's own (what `--record-trace` writes): JSON lines, first a header
///   `{"d2moe_trace": 1, "layers": L, "experts": E, "top_k": K}`, then one object per (token,
///   layer) `{"token": i, "layer": l, "sequence": s, "position": p, "experts": [...], "weights": [...]}`;
///   `token` is the i-th token routed through layer l (`sequence`/`position` are informative);
/// - moe-beyond's CSV (`Layer ID,Batch Number,Token,Activated Expert IDs`, rows grouped by
///   layer, a token being the row's rank in its layer; DeepSeek-V2-Lite's MoE layers 1…26 become
///   0…25; no weights);
/// - speculative-moe's JSON lines (`layer`, `token_pos`, `experts`, `gating_probs`): a prefill
///   block per layer, then decode records token by token (a new token whenever `layer` does not
///   increase). Missing (token, layer) records stay unknown: the model's router decides them.
public final class RoutingTrace: @unchecked Sendable {
    public struct Route: Sendable {
        public var experts: [Int32]
        public var weights: [Float]?
    }

    public let source: String
    public let layerCount: Int
    public let topK: Int
    /// [token][layer], nil where the trace has no record.
    public let tokens: [[Route?]]

    public var count: Int { tokens.count }
    /// Highest expert id in the trace + 1.
    public let expertCount: Int

    init(source: String, tokens: [[Route?]]) throws {
        self.source = source
        self.tokens = tokens
        layerCount = tokens.first?.count ?? 0
        let routes = tokens.joined().compactMap { $0 }
        guard let first = routes.first, !tokens.isEmpty else { throw ModelError("\(source): the trace has no routes") }
        let k = first.experts.count
        topK = k
        guard routes.allSatisfy({ $0.experts.count == k && ($0.weights?.count ?? k) == k }) else {
            throw ModelError("\(source): routes choose different numbers of experts")
        }
        expertCount = Int(routes.map { $0.experts.max() ?? 0 }.max() ?? 0) + 1
    }

    public static func load(path: String) throws -> RoutingTrace {
        guard let data = FileManager.default.contents(atPath: path) else { throw ModelError("\(path): cannot read the trace") }
        let text = String(decoding: data, as: UTF8.self)
        let lines = text.split(whereSeparator: \.isNewline).filter { !$0.isEmpty }
        guard let head = lines.first else { throw ModelError("\(path): the trace is empty") }
        if head.hasPrefix("Layer ID,") { return try csv(lines.dropFirst(), path: path) }
        return try jsonLines(lines, path: path)
    }

    private static func csv(_ lines: ArraySlice<Substring>, path: String) throws -> RoutingTrace {
        var byLayer: [Int: [Route]] = [:]
        for (n, line) in lines.enumerated() {
            guard let comma = line.firstIndex(of: ","), let layer = Int(line[..<comma]),
                  let open = line.lastIndex(of: "["), let close = line.lastIndex(of: "]"), open < close else {
                throw ModelError("\(path): line \(n + 2) is not 'layer,batch,token,\"[experts]\"'")
            }
            let ids = line[line.index(after: open)..<close].split(separator: ",").map { Int32($0.trimmingCharacters(in: .whitespaces)) }
            guard !ids.isEmpty, ids.allSatisfy({ $0 != nil && $0! >= 0 }) else { throw ModelError("\(path): line \(n + 2) has bad expert ids") }
            byLayer[layer, default: []].append(Route(experts: ids.map { $0! }, weights: nil))
        }
        let layers = byLayer.keys.sorted()
        guard let count = byLayer[layers.first ?? 0]?.count, layers.allSatisfy({ byLayer[$0]!.count == count }) else {
            throw ModelError("\(path): layers have different numbers of tokens")
        }
        guard layers == Array(layers.first!...layers.last!) else { throw ModelError("\(path): the trace's layers are not contiguous") }
        return try RoutingTrace(source: path, tokens: (0..<count).map { t in layers.map { byLayer[$0]![t] } })
    }

    private static func jsonLines(_ lines: [Substring], path: String) throws -> RoutingTrace {
        var objects: [[String: Any]] = []
        for (n, line) in lines.enumerated() {
            guard let o = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] else {
                throw ModelError("\(path): line \(n + 1) is not a JSON object")
            }
            objects.append(o)
        }
        func route(_ o: [String: Any], _ n: Int) throws -> (layer: Int, Route) {
            guard let layer = o["layer"] as? Int, layer >= 0, let experts = o["experts"] as? [Int], !experts.isEmpty,
                  experts.allSatisfy({ $0 >= 0 }) else {
                throw ModelError("\(path): record \(n + 1) lacks a layer or expert ids")
            }
            let weights = ((o["weights"] ?? o["gating_probs"]) as? [Double])?.map(Float.init)
            return (layer, Route(experts: experts.map(Int32.init), weights: weights))
        }
        var tokens: [[Int: Route]] = []
        if objects.first?["d2moe_trace"] != nil {
            for (n, o) in objects.enumerated().dropFirst() {
                let (layer, r) = try route(o, n)
                guard let t = o["token"] as? Int, t >= 0, t < 10_000_000 else { throw ModelError("\(path): record \(n + 1) lacks a token index") }
                while tokens.count <= t { tokens.append([:]) }
                tokens[t][layer] = r
            }
        } else {
            // Prefill: layer-major blocks with token_pos; decode: token-major, position 0.
            var i = 0, previous = -1
            var prefill: [[Int: Route]] = []
            while i < objects.count {
                let (layer, r) = try route(objects[i], i)
                if layer < previous { break }
                previous = layer
                let p = objects[i]["token_pos"] as? Int ?? 0
                guard p >= 0, p < 1_000_000 else { throw ModelError("\(path): record \(i + 1) has a bad token_pos") }
                while prefill.count <= p { prefill.append([:]) }
                prefill[p][layer] = r
                i += 1
            }
            tokens = prefill
            previous = Int.max
            while i < objects.count {
                let (layer, r) = try route(objects[i], i)
                if layer <= previous { tokens.append([:]) }
                tokens[tokens.count - 1][layer] = r
                previous = layer
                i += 1
            }
        }
        let layers = tokens.flatMap(\.keys).max().map { $0 + 1 } ?? 0
        return try RoutingTrace(source: path, tokens: tokens.map { t in (0..<layers).map { t[$0] } })
    }
}

/// Drives expert selection from a trace: position p of sequence s uses trace token
/// (p + s·`sequenceOffset`) mod count, so lockstep sequences replay different stretches.
public final class TraceReplay: RoutingHook, @unchecked Sendable {
    public let trace: RoutingTrace
    public let sequenceOffset: Int
    /// Routes taken from the trace, and those left to the model's router (no record).
    public private(set) var replayed = 0
    public private(set) var unknown = 0

    public init(trace: RoutingTrace, sequenceOffset: Int = 0) {
        self.trace = trace
        self.sequenceOffset = sequenceOffset
    }

    public func routed(moeLayer: Int, batch: [BatchToken], routes: inout ExpertRoutes, nExperts: Int) throws {
        let k = routes.topK
        guard trace.topK == k else {
            throw ModelError("\(trace.source): the trace chooses \(trace.topK) experts per token, the model \(k) (set --experts-per-token \(trace.topK))")
        }
        guard trace.expertCount <= nExperts else {
            throw ModelError("\(trace.source): the trace names expert \(trace.expertCount - 1), the model has \(nExperts) per layer")
        }
        // Trace weights, like the fallback below, sum to one over the chosen experts.
        routes.weighting = .normalized
        for (t, bt) in batch.enumerated() {
            let i = (bt.position + bt.sequence * sequenceOffset) % trace.count
            guard moeLayer < trace.layerCount, let r = trace.tokens[i][moeLayer] else { unknown += 1; continue }
            replayed += 1
            var sum: Float = 0
            for j in 0..<k { sum += routes.probabilities[t * nExperts + Int(r.experts[j])] }
            // A trace holds no score for the experts it did not choose: they score 0, not the
            // synthetic router's values, so score-based eviction and HOBBIT see the trace's scores
            // only (SMoE's S_{k+1} is 0: it cannot substitute on a trace). A trace without gate
            // weights scores its chosen experts 1/k each; their mixing weights stay the synthetic
            // router's, renormalised, as before.
            var weights = [Float](repeating: 0, count: k)
            for j in 0..<k { weights[j] = routes.probabilities[t * nExperts + Int(r.experts[j])] / max(sum, .leastNormalMagnitude) }
            for e in 0..<nExperts { routes.probabilities[t * nExperts + e] = 0 }
            for j in 0..<k {
                let e = Int(r.experts[j])
                routes.experts[t * k + j] = r.experts[j]
                if let w = r.weights {
                    routes.weights[t * k + j] = w[j]
                    routes.probabilities[t * nExperts + e] = w[j]
                } else {
                    routes.weights[t * k + j] = weights[j]
                    routes.probabilities[t * nExperts + e] = 1 / Float(k)
                }
            }
        }
    }
}

/// Writes the routers' choices as a d2moe trace (the format `RoutingTrace` documents).
public final class TraceRecorder: RoutingHook, @unchecked Sendable {
    private let handle: FileHandle
    private var perLayer: [Int: Int] = [:]
    private var wroteHeader = false
    public let path: String

    public init(path: String) throws {
        guard FileManager.default.createFile(atPath: path, contents: nil), let h = FileHandle(forWritingAtPath: path) else {
            throw ModelError("\(path): cannot create the trace file")
        }
        self.path = path
        handle = h
    }

    deinit { try? handle.close() }

    public func routed(moeLayer: Int, batch: [BatchToken], routes: inout ExpertRoutes, nExperts: Int) throws {
        var text = ""
        if !wroteHeader {
            text += "{\"d2moe_trace\": 1, \"experts\": \(nExperts), \"top_k\": \(routes.topK)}\n"
            wroteHeader = true
        }
        let k = routes.topK
        for (t, bt) in batch.enumerated() {
            let i = perLayer[moeLayer, default: 0]
            perLayer[moeLayer] = i + 1
            let experts = (0..<k).map { String(routes.experts[t * k + $0]) }.joined(separator: ", ")
            let weights = (0..<k).map { String(routes.weights[t * k + $0]) }.joined(separator: ", ")
            text += "{\"token\": \(i), \"layer\": \(moeLayer), \"sequence\": \(bt.sequence), \"position\": \(bt.position), \"experts\": [\(experts)], \"weights\": [\(weights)]}\n"
        }
        do { try handle.write(contentsOf: Data(text.utf8)) } catch { throw ModelError("\(path): writing the trace failed (\(error))") }
    }
}
