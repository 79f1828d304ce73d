import Foundation
import D2MoEKernels

/// The experts chosen for each token of a batch, with their mixing weights: what an MoE layer
/// asks of its `ExpertBackend`.
public struct ExpertRoutes: Sendable {
    /// Experts per token.
    public let topK: Int
    /// [tokens, topK] expert ids.
    public var experts: [Int32]
    /// [tokens, topK] weights multiplying each expert's output.
    public var weights: [Float]
    /// [tokens, nExperts] router probabilities (softmax over all experts), for policies that rank
    /// experts by importance.
    public var probabilities: [Float]
    /// How `weights` follow from `probabilities`, so that a policy changing the experts can
    /// weight the new ones as the model would have.
    public var weighting: RouteWeighting

    public var tokens: Int { topK == 0 ? 0 : experts.count / topK }

    public init(topK: Int, experts: [Int32], weights: [Float], probabilities: [Float], weighting: RouteWeighting = .probability) {
        self.topK = topK
        self.experts = experts
        self.weights = weights
        self.probabilities = probabilities
        self.weighting = weighting
    }
}

/// How an MoE block weights its chosen experts' outputs.
public enum RouteWeighting: Sendable {
    /// The router probability.
    case probability
    /// The probability renormalised over the token's chosen experts.
    case normalized
    /// 1 (a MoEfied dense model's unweighted sum).
    case unit
}

/// Computes routed experts. The model calls it with "these tokens need these experts"; the
/// resident implementation holds every expert in memory, later ones stream them under a budget.
public protocol ExpertBackend: AnyObject {
    /// out[t] += Σ_j weights[t, j] · expert_{experts[t, j]}(x[t]) for MoE layer `layer`.
    /// x, out: [tokens, hidden].
    func compute(layer: Int, input x: UnsafePointer<Float>, routes: ExpertRoutes, output out: UnsafeMutablePointer<Float>) throws
    /// True when the backend wants the next MoE layer's predicted routes (`schedulePrefetch`).
    var wantsPrefetch: Bool { get }
    /// `routes`: the next MoE layer `layer`'s router applied to the current layer's input.
    func schedulePrefetch(layer: Int, routes: ExpertRoutes)
    /// A forward pass begins; it ends with `stepEnded` unless it throws.
    func stepBegan()
    /// The forward pass ended; `prompt`: it processed several tokens of some sequence.
    func stepEnded(prompt: Bool)
}

extension ExpertBackend {
    /// Resident backends have nothing to read ahead.
    public var wantsPrefetch: Bool { false }
    public func schedulePrefetch(layer: Int, routes: ExpertRoutes) {}
    public func stepBegan() {}
    public func stepEnded(prompt: Bool) {}
}

/// Sees (and may replace) the experts the router chose: trace replay and trace recording.
/// Called on the compute thread once per MoE layer per forward pass.
public protocol RoutingHook: AnyObject {
    /// `routes` rows follow `batch`; `moeLayer` counts MoE layers only.
    func routed(moeLayer: Int, batch: [BatchToken], routes: inout ExpertRoutes, nExperts: Int) throws
}

/// What an observed expert computed: (expert, its gathered input rows [tokens, hidden], the
/// activations entering its down projection [tokens, intermediate], tokens, intermediate, each
/// row's token in the batch, each row's gate weight).
typealias ExpertObservation = (_ expert: Int, _ input: UnsafePointer<Float>, _ activations: UnsafePointer<Float>,
                               _ tokens: Int, _ intermediate: Int, _ rows: [Int], _ weights: [Float]) -> Void

/// A backend that can show an observer what each expert saw (calibration). Kept apart from
/// `ExpertBackend` so backends that never hold activations need not pretend to.
protocol ObservableExpertBackend: ExpertBackend {
    /// `compute`, reporting each expert that received tokens to `observe`.
    func compute(layer: Int, input x: UnsafePointer<Float>, routes: ExpertRoutes, output out: UnsafeMutablePointer<Float>,
                 observe: ExpertObservation?) throws
}

/// A sparse MoE block: a softmax router choosing top-k experts per token, optional
/// renormalisation of their weights, and an optional always-on shared expert with a sigmoid gate.
struct SparseMoE {
    /// [nExperts, hidden]
    let router: Linear
    let nExperts: Int
    let topK: Int
    /// Renormalise the top-k probabilities to sum to one (Mixtral, Qwen3-MoE).
    let normalizeTopK: Bool
    /// Sum expert outputs unweighted (MoEfied dense models: all experts active equals the dense FFN).
    let unitWeights: Bool
    /// Qwen2-MoE's shared expert and its gate ([1, hidden]).
    let sharedExpert: FeedForward?
    let sharedGate: Linear?
    /// Index of this block among the model's MoE layers, as the expert backend counts them.
    let moeLayer: Int

    /// The routes of `tokens` rows of x: softmax over all experts, top-k, optional renormalisation.
    func route(_ x: UnsafePointer<Float>, tokens: Int, scratch: Scratch) -> ExpertRoutes {
        let logits = scratch.floats(.router, tokens * nExperts)
        router(x, tokens: tokens, logits)
        var experts = [Int32](repeating: 0, count: tokens * topK)
        var weights = [Float](repeating: 0, count: tokens * topK)
        var probabilities = [Float](repeating: 0, count: tokens * nExperts)
        var order = [Int](repeating: 0, count: nExperts)
        for t in 0..<tokens {
            let p = logits + t * nExperts
            Kernels.softmax(p, n: nExperts)
            for e in 0..<nExperts { probabilities[t * nExperts + e] = p[e]; order[e] = e }
            // Stable: equal probabilities keep the lower expert id first, as torch.topk does on CPU.
            order.sort { p[$0] > p[$1] || (p[$0] == p[$1] && $0 < $1) }
            var sum: Float = 0
            for j in 0..<topK { sum += p[order[j]] }
            for j in 0..<topK {
                experts[t * topK + j] = Int32(order[j])
                weights[t * topK + j] = unitWeights ? 1 : (normalizeTopK ? p[order[j]] / sum : p[order[j]])
            }
        }
        return ExpertRoutes(topK: topK, experts: experts, weights: weights, probabilities: probabilities,
                            weighting: unitWeights ? .unit : (normalizeTopK ? .normalized : .probability))
    }

    /// out: [tokens, hidden] = the block's output for x (normalised hidden states). `observe`
    /// sees each routed expert's inputs and activations (the shared expert is not reported).
    func callAsFunction(_ x: UnsafePointer<Float>, tokens: Int, hidden: Int, backend: ExpertBackend,
                        scratch: Scratch, observe: ExpertObservation? = nil, hook: (RoutingHook, [BatchToken])? = nil,
                        _ out: UnsafeMutablePointer<Float>) throws {
        var routes = route(x, tokens: tokens, scratch: scratch)
        if let (hook, batch) = hook { try hook.routed(moeLayer: moeLayer, batch: batch, routes: &routes, nExperts: nExperts) }
        out.initialize(repeating: 0, count: tokens * hidden)
        if let observe {
            // Silently skipping would leave calibration with experts that look unused.
            guard let observable = backend as? ObservableExpertBackend else {
                throw ModelError("the expert backend \(type(of: backend)) cannot report expert activations to an observer")
            }
            try observable.compute(layer: moeLayer, input: x, routes: routes, output: out, observe: observe)
        } else {
            try backend.compute(layer: moeLayer, input: x, routes: routes, output: out)
        }
        if let sharedExpert, let sharedGate {
            let shared = scratch.floats(.ffnOut, tokens * hidden)
            sharedExpert(x, tokens: tokens, shared, gateBuffer: scratch.floats(.gate, tokens * sharedExpert.intermediate),
                         upBuffer: scratch.floats(.up, tokens * sharedExpert.intermediate))
            let g = scratch.floats(.sharedGate, tokens)
            sharedGate(x, tokens: tokens, g)
            for t in 0..<tokens {
                let s = 1 / (1 + Foundation.exp(-g[t]))
                Kernels.axpy(s, shared + t * hidden, out + t * hidden, n: hidden)
            }
        }
    }
}
