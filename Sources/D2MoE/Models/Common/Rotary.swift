import Foundation

/// Rotary position embedding parameters: the inverse frequencies of the rotated pairs, after the
/// checkpoint's scaling rule. Applied rotate-half style (Hugging Face layout); GGUF llama weights
/// are un-permuted at load so one convention serves every source.
struct RotaryEmbedding: Sendable {
    /// [rotaryDim / 2]
    let invFreq: [Float]
    let rotaryDim: Int

    /// Scaling rules found in config.json's `rope_scaling` / `rope_parameters`.
    enum Scaling: Sendable, Equatable {
        case none
        case linear(factor: Double)
        case llama3(factor: Double, lowFreqFactor: Double, highFreqFactor: Double, originalContext: Double)
    }

    init(rotaryDim: Int, base: Double, scaling: Scaling = .none) {
        self.rotaryDim = rotaryDim
        var freqs = (0..<(rotaryDim / 2)).map { i in 1.0 / pow(base, Double(2 * i) / Double(rotaryDim)) }
        switch scaling {
        case .none:
            break
        case .linear(let factor):
            freqs = freqs.map { $0 / factor }
        case .llama3(let factor, let low, let high, let original):
            let lowWavelen = original / low
            let highWavelen = original / high
            freqs = freqs.map { f in
                let wavelen = 2 * Double.pi / f
                if wavelen < highWavelen { return f }
                if wavelen > lowWavelen { return f / factor }
                let smooth = (original / wavelen - low) / (high - low)
                return (1 - smooth) * f / factor + smooth * f
            }
        }
        invFreq = freqs.map { Float($0) }
    }

    /// Reads `rope_scaling` (or transformers v5's `rope_parameters`) from a config dictionary.
    static func scaling(from json: [String: Any]?) -> Scaling {
        guard let json, let type = (json["rope_type"] ?? json["type"]) as? String else { return .none }
        let factor = (json["factor"] as? Double) ?? 1
        switch type {
        case "linear": return .linear(factor: factor)
        case "llama3":
            return .llama3(factor: factor,
                           lowFreqFactor: (json["low_freq_factor"] as? Double) ?? 1,
                           highFreqFactor: (json["high_freq_factor"] as? Double) ?? 4,
                           originalContext: (json["original_max_position_embeddings"] as? Double) ?? 8192)
        default: return .none
        }
    }
}
