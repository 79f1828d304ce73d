import Foundation

/// Per-expert bit-widths, as `d2moe calibrate-bits` writes them: JSON
/// `{"d2moe_expert_bits": 1, "average_bits": 3.0, "source": "...", "bits": [[4, 2, …], …]}`,
/// `bits[moeLayer][expert]`.
public struct ExpertBitTable: Codable, Sendable, Equatable {
    public var bits: [[Int]]
    public var averageBits: Double
    /// What the importance came from (a text file, a trace), for the record.
    public var origin: String
    /// The file the table was read from, for error messages (not stored).
    public var source = ""

    enum CodingKeys: String, CodingKey {
        case version = "d2moe_expert_bits", bits, averageBits = "average_bits", origin = "source"
    }

    public init(bits: [[Int]], averageBits: Double, origin: String) {
        self.bits = bits
        self.averageBits = averageBits
        self.origin = origin
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let version = try c.decode(Int.self, forKey: .version)
        guard version == 1 else {
            throw DecodingError.dataCorruptedError(forKey: .version, in: c, debugDescription: "version \(version), this build reads 1")
        }
        bits = try c.decode([[Int]].self, forKey: .bits)
        averageBits = try c.decode(Double.self, forKey: .averageBits)
        origin = try c.decodeIfPresent(String.self, forKey: .origin) ?? ""
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(1, forKey: .version)
        try c.encode(bits, forKey: .bits)
        try c.encode(averageBits, forKey: .averageBits)
        try c.encode(origin, forKey: .origin)
    }

    public static func load(path: String) throws -> ExpertBitTable {
        guard let data = FileManager.default.contents(atPath: path) else { throw ModelError("\(path): cannot read the expert bit-widths") }
        do {
            var t = try JSONDecoder().decode(ExpertBitTable.self, from: data)
            t.source = path
            return t
        } catch {
            throw ModelError("\(path): not a d2moe expert bit-width file (\(error))")
        }
    }

    public func write(path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        try encoder.encode(self).write(to: URL(fileURLWithPath: path), options: .atomic)
    }

    /// Bit-widths from `importance[moeLayer][expert]` (higher = more important): per layer, in
    /// falling importance, each expert gets the most bits that still leave every later expert
    /// the fewest, so the mean over the layer's experts is at most `averageBits` (and within one
    /// step of it). Ties keep the lower expert id first.
    public static func allocate(importance: [[Double]], bits: [Int], averageBits: Double, origin: String) throws -> ExpertBitTable {
        let sorted = bits.sorted()
        guard let low = sorted.first, let high = sorted.last else { throw ModelError("no bit-widths to choose from") }
        guard averageBits >= Double(low), averageBits <= Double(high) else {
            throw ModelError("--average-bits \(averageBits) is outside the file's bit-widths \(low)…\(high)")
        }
        let table = importance.map { row -> [Int] in
            let order = row.indices.sorted { row[$0] > row[$1] || (row[$0] == row[$1] && $0 < $1) }
            var spare = Int(((averageBits - Double(low)) * Double(row.count) + 1e-9).rounded(.down))
            var out = [Int](repeating: low, count: row.count)
            for e in order {
                guard let b = sorted.last(where: { $0 - low <= spare }) else { break }
                out[e] = b
                spare -= b - low
            }
            return out
        }
        return ExpertBitTable(bits: table, averageBits: averageBits, origin: origin)
    }
}
