import Foundation

/// EdgeMoE's rule (DESIGN §3.6): every expert of every MoE layer has one bit-width fixed before
/// serving, chosen by its importance on calibration data, and every token routed to it gets that
/// bit-width whatever its gate score. `--bit-policy static` with `--expert-bits FILE`.
public struct StaticExpertBits: BitWidthPolicy {
    /// levels[moeLayer][expert]: the 1-based level of the file's bit-widths.
    public let levelTable: [[Int]]
    public var name: String { "static" }

    /// `table` in bits, checked against the file: one row per MoE layer, one entry per expert,
    /// each a bit-width the file stores.
    public init(table: ExpertBitTable, fileBits: [Int], moeLayers: Int, experts: Int) throws {
        guard table.bits.count == moeLayers else {
            throw ModelError("\(table.source): the expert bit-widths cover \(table.bits.count) MoE layers, the model has \(moeLayers)")
        }
        levelTable = try table.bits.enumerated().map { l, row in
            guard row.count == experts else {
                throw ModelError("\(table.source): MoE layer \(l) has bit-widths for \(row.count) experts, the model has \(experts)")
            }
            return try row.map { b in
                guard let i = fileBits.firstIndex(of: b) else {
                    throw ModelError("\(table.source): \(b) bits (MoE layer \(l)) is not stored in the model file (it holds \(fileBits))")
                }
                return i + 1
            }
        }
    }

    public func levels(layer: Int, input: UnsafePointer<Float>, hidden: Int, routes: ExpertRoutes, nExperts: Int, levelCount: Int,
                       into levels: inout [Int]) {
        let row = levelTable[layer]
        for i in levels.indices { levels[i] = min(row[Int(routes.experts[i])], levelCount) }
    }
}
