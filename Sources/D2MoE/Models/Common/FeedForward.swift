import D2MoEKernels

/// The gated feed-forward network: down(act(gate(x)) · up(x)).
struct FeedForward {
    enum Activation: Sendable {
        case silu, geluTanh

        /// From config.json's hidden_act / hidden_activation.
        init(name: String, origin: String) throws {
            switch name {
            case "silu", "swish": self = .silu
            case "gelu_pytorch_tanh", "gelu_tanh", "gelu": self = .geluTanh
            default: throw ModelError("\(origin): unsupported activation '\(name)'")
            }
        }
    }

    let gate: Linear  // [intermediate, hidden]
    let up: Linear  // [intermediate, hidden]
    let down: Linear  // [hidden, intermediate]
    let activation: Activation

    var intermediate: Int { gate.outFeatures }

    init(gate: Linear, up: Linear, down: Linear, activation: Activation) {
        self.gate = gate
        self.up = up
        self.down = down
        self.activation = activation
    }

    /// Loads `<prefix>.gate_proj`, `.up_proj`, `.down_proj` (or the names given).
    init(_ source: WeightSource, _ prefix: String, hidden: Int, intermediate: Int, activation: Activation,
         options: LoadOptions, names: (gate: String, up: String, down: String) = ("gate_proj", "up_proj", "down_proj")) throws {
        gate = try Linear(source, "\(prefix).\(names.gate)", out: intermediate, in: hidden, options: options)
        up = try Linear(source, "\(prefix).\(names.up)", out: intermediate, in: hidden, options: options)
        down = try Linear(source, "\(prefix).\(names.down)", out: hidden, in: intermediate, options: options)
        self.activation = activation
    }

    /// out: [tokens, hidden]. `gateBuffer` and `upBuffer` hold [tokens, intermediate]; afterwards
    /// `gateBuffer` holds the activations that enter `down` (observers read them).
    func callAsFunction(_ x: UnsafePointer<Float>, tokens: Int, _ out: UnsafeMutablePointer<Float>,
                        gateBuffer: UnsafeMutablePointer<Float>, upBuffer: UnsafeMutablePointer<Float>) {
        Linear.shared(x, tokens: tokens, gate, gateBuffer, up, upBuffer)
        let n = tokens * intermediate
        switch activation {
        case .silu: Kernels.siluMul(gateBuffer, upBuffer, n: n)
        case .geluTanh: Kernels.geluTanhMul(gateBuffer, upBuffer, n: n)
        }
        down(gateBuffer, tokens: tokens, out)
    }
}
