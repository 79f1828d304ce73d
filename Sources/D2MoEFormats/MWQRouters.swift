import Foundation

extension MWQHeader {
    /// The optional router section of an `.mwq` file (DESIGN §3.1): one bit-width router per
    /// (layer, expert), appended after the last expert record, 4 KiB aligned. Its bytes, all
    /// float32 little-endian: for each entry in order its weight [levels × hidden] (row-major, one
    /// row per level) and bias [levels]; then for each entry its calibration logits
    /// [calibrationRows × levels]. Files without the section have no `routers` key and load as
    /// before; readers that predate it ignore the key.
    public struct RouterSection: Codable, Sendable, Equatable {
        /// From the start of the file.
        public var offset: Int
        public var bytes: Int
        public var crc32: UInt32
        /// Width of the router input (the model's hidden size).
        public var hidden: Int
        /// Outputs per router: the file's level count.
        public var levels: Int
        public var entries: [Entry]
        /// How the routers were trained (free-form: corpus, tokens, alpha, capacity, seed).
        public var training: JSONValue?

        public struct Entry: Codable, Sendable, Equatable {
            /// Decoder layer, and expert within it (0 for a dense FFN), as expert records count them.
            public var layer: Int
            public var expert: Int
            /// Rows of calibration logits kept for solving a target average bit-width.
            public var calibrationRows: Int
            /// Expert-tokens each calibration row stands for (the routed tokens it was sampled from
            /// divided by the rows kept), so layers and experts count as often as they ran.
            public var calibrationWeight: Double
        }
    }
}

/// One trained bit-width router: logits = weight · x + bias over the file's levels.
public struct MWQRouter: Sendable, Equatable {
    public var layer: Int
    public var expert: Int
    /// [levels × hidden]
    public var weight: [Float]
    /// [levels]
    public var bias: [Float]
    /// [rows × levels]: the router's logits on held calibration inputs (for `--target-bits`).
    public var calibrationLogits: [Float]
    public var calibrationWeight: Double

    public init(layer: Int, expert: Int, weight: [Float], bias: [Float], calibrationLogits: [Float] = [], calibrationWeight: Double = 1) {
        self.layer = layer; self.expert = expert; self.weight = weight; self.bias = bias
        self.calibrationLogits = calibrationLogits; self.calibrationWeight = calibrationWeight
    }
}

/// Every router of a file.
public struct MWQRouterSet: Sendable, Equatable {
    public var hidden: Int
    public var levels: Int
    public var routers: [MWQRouter]
    public var training: JSONValue?

    public init(hidden: Int, levels: Int, routers: [MWQRouter], training: JSONValue? = nil) {
        self.hidden = hidden; self.levels = levels; self.routers = routers; self.training = training
    }

    /// The section's bytes and its entries (offset and CRC left for the writer).
    func encoded() throws -> (bytes: [UInt8], entries: [MWQHeader.RouterSection.Entry]) {
        var floats: [Float] = []
        var entries: [MWQHeader.RouterSection.Entry] = []
        for r in routers {
            guard r.weight.count == levels * hidden, r.bias.count == levels, r.calibrationLogits.count % levels == 0 else {
                throw FormatError("MWQ", "router (\(r.layer), \(r.expert)) has \(r.weight.count) weights and \(r.bias.count) biases, expected \(levels * hidden) and \(levels)")
            }
            floats += r.weight
            floats += r.bias
            entries.append(.init(layer: r.layer, expert: r.expert, calibrationRows: r.calibrationLogits.count / levels,
                                 calibrationWeight: r.calibrationWeight))
        }
        for r in routers { floats += r.calibrationLogits }
        let bytes = floats.withUnsafeBytes { Array($0) }
        return (bytes, entries)
    }
}

extension MWQFile {
    /// The trained routers, nil when the file has none; the section is checked against its CRC.
    public func routers() throws -> MWQRouterSet? {
        guard let s = header.routers else { return nil }
        let perRouter = s.levels * s.hidden + s.levels
        let expected = (s.entries.count * perRouter + s.entries.reduce(0) { $0 + $1.calibrationRows } * s.levels) * 4
        guard s.levels == header.quantization.bits.count, s.hidden > 0, s.bytes == expected,
              s.offset >= 0, s.offset + s.bytes <= file.size else {
            throw FormatError(path, "the router section's size, shape or offset is inconsistent")
        }
        let raw = try file.bytes(at: s.offset, count: s.bytes, what: "router section")
        guard CRC32.checksum(raw) == s.crc32 else { throw FormatError(path, "router section checksum mismatch (the file is corrupt)") }
        var floats = [Float](repeating: 0, count: s.bytes / 4)
        floats.withUnsafeMutableBytes { $0.copyMemory(from: raw) }
        var routers: [MWQRouter] = []
        var calibAt = s.entries.count * perRouter
        for (i, e) in s.entries.enumerated() {
            let at = i * perRouter
            let n = e.calibrationRows * s.levels
            routers.append(MWQRouter(layer: e.layer, expert: e.expert, weight: Array(floats[at..<(at + s.levels * s.hidden)]),
                                     bias: Array(floats[(at + s.levels * s.hidden)..<(at + perRouter)]),
                                     calibrationLogits: Array(floats[calibAt..<(calibAt + n)]), calibrationWeight: e.calibrationWeight))
            calibAt += n
        }
        return MWQRouterSet(hidden: s.hidden, levels: s.levels, routers: routers, training: s.training)
    }

    /// Writes `set` into the `.mwq` file at `path`, replacing any routers it had. The new file is
    /// written beside the old one under a temporary name and renamed over it only when complete,
    /// so a crash leaves the old file intact, never a half-written one. The header may grow into
    /// the next 4 KiB, so every section is moved by the same aligned distance.
    public static func writeRouters(_ set: MWQRouterSet, into path: String) throws {
        let old = try MWQFile(path: path)
        guard set.levels == old.header.quantization.bits.count else {
            throw FormatError(path, "routers over \(set.levels) levels, the file holds \(old.header.quantization.bits.count)")
        }
        func align(_ x: Int, _ a: Int) -> Int { (x + a - 1) / a * a }
        let h0 = old.header
        let oldStart = h0.residentOffset
        // Everything from the resident section to the last record's end, router section excluded.
        let recordsEnd = h0.experts.map { $0.offset + $0.levelBytes.reduce(0, +) }.max() ?? 0
        let oldEnd = align(max(h0.residentOffset + h0.residentBytes, recordsEnd), 4096)
        let (blob, entries) = try set.encoded()
        var header = h0
        var json = [UInt8]()
        var start = oldStart
        for _ in 0..<8 {
            let delta = start - oldStart
            header = h0
            header.residentOffset = start
            header.resident = h0.resident.map { var t = $0; t.offset += delta; return t }
            header.experts = h0.experts.map { var e = $0; e.offset += delta; return e }
            header.routers = .init(offset: oldEnd + delta, bytes: blob.count, crc32: CRC32.checksum(blob), hidden: set.hidden,
                                   levels: set.levels, entries: entries, training: set.training)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            json = Array(try encoder.encode(header))
            // Never move sections toward the start: the header area only grows.
            let needed = max(align(16 + json.count, 4096), oldStart)
            if needed == start { break }
            start = needed
        }
        guard align(16 + json.count, 4096) <= start else { throw FormatError(path, "the header layout did not settle") }
        let body = try old.file.bytes(at: oldStart, count: oldEnd - oldStart, what: "MWQ body")
        let directory = (path as NSString).deletingLastPathComponent
        let temporary = (directory.isEmpty ? "." : directory) + "/." + (path as NSString).lastPathComponent + ".routers-\(getpid())"
        FileManager.default.createFile(atPath: temporary, contents: nil)
        guard let out = FileHandle(forWritingAtPath: temporary) else { throw FormatError(path, "cannot create \(temporary)") }
        var ok = false
        defer { if !ok { try? out.close(); try? FileManager.default.removeItem(atPath: temporary) } }
        var prefix = Array("D2MWQ\0\0\0".utf8)
        withUnsafeBytes(of: UInt32(MWQFile.version).littleEndian) { prefix += $0 }
        withUnsafeBytes(of: UInt32(json.count).littleEndian) { prefix += $0 }
        try out.write(contentsOf: prefix + json + [UInt8](repeating: 0, count: start - 16 - json.count))
        // The body in 16 MiB pieces, straight from the old file's mapping.
        var at = 0
        while at < body.count {
            let n = min(16 << 20, body.count - at)
            try out.write(contentsOf: Data(UnsafeRawBufferPointer(rebasing: body[at..<(at + n)])))
            at += n
        }
        try out.write(contentsOf: blob + [UInt8](repeating: 0, count: align(blob.count, 4096) - blob.count))
        try out.synchronize()
        try out.close()
        ok = true
        guard rename(temporary, path) == 0 else {
            try? FileManager.default.removeItem(atPath: temporary)
            throw FormatError(path, "cannot rename \(temporary) into place")
        }
    }
}
