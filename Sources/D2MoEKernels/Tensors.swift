/// Element types of dense weight matrices the kernels read directly.
public enum ElementType: String, Sendable, CaseIterable {
    case f32, f16, bf16
    /// ggml's Q8_0: per 32 consecutive weights of a row a float16 scale d and 32 int8 codes q
    /// (34 bytes, 8.5 bits per weight); w = d·q. Rows must be a multiple of 32 long.
    case q8_0

    /// Bytes of one row of `cols` elements.
    public func rowBytes(cols: Int) -> Int {
        switch self {
        case .f32: 4 * cols
        case .f16, .bf16: 2 * cols
        case .q8_0: cols / 32 * 34
        }
    }

    /// Whether rows of `cols` elements can be stored in this type.
    public func holds(cols: Int) -> Bool { self != .q8_0 || cols % 32 == 0 }
}

/// Owned, 64-byte aligned memory. Weights and scratch buffers live in these so that SIMD loads
/// are aligned and lifetimes are explicit.
public final class AlignedBuffer: @unchecked Sendable {
    /// Size in bytes.
    public let byteCount: Int
    /// Start of the memory; valid while the buffer is alive.
    public let pointer: UnsafeMutableRawPointer

    /// Allocates `byteCount` zeroed bytes.
    public init(byteCount: Int, alignment: Int = 64) {
        self.byteCount = byteCount
        pointer = UnsafeMutableRawPointer.allocate(byteCount: max(byteCount, 1), alignment: alignment)
        pointer.initializeMemory(as: UInt8.self, repeating: 0, count: max(byteCount, 1))
    }

    /// Allocates `byteCount` bytes left as the allocator gives them, for memory that is always
    /// written before it is read: a large block's pages then become resident only as they are
    /// written (a KV cache sized for the whole context holds only the positions used).
    public init(uninitializedByteCount byteCount: Int, alignment: Int = 64) {
        self.byteCount = byteCount
        pointer = UnsafeMutableRawPointer.allocate(byteCount: max(byteCount, 1), alignment: alignment)
    }

    /// The memory as `count` floats.
    public func floats(count: Int? = nil) -> UnsafeMutablePointer<Float> {
        pointer.bindMemory(to: Float.self, capacity: count ?? byteCount / 4)
    }

    deinit { pointer.deallocate() }
}

/// A dense weight matrix, row-major: `rows` output channels of `cols` inputs each.
/// Keeps the memory that holds its elements alive.
public struct DenseMatrix: @unchecked Sendable {
    public let rows: Int
    public let cols: Int
    public let elementType: ElementType
    /// First element; row r starts at `base + r * elementType.rowBytes(cols: cols)`.
    public let base: UnsafeRawPointer
    private let owner: AnyObject?

    /// Wraps memory owned by `owner` (an `AlignedBuffer`, a mapped file, ...).
    public init(rows: Int, cols: Int, elementType: ElementType, base: UnsafeRawPointer, owner: AnyObject?) {
        precondition(elementType.holds(cols: cols), "DenseMatrix: \(cols) columns cannot be stored as \(elementType)")
        self.rows = rows
        self.cols = cols
        self.elementType = elementType
        self.base = base
        self.owner = owner
    }

    /// Copies float32 values (row-major, rows × cols) into a new aligned buffer.
    public init(rows: Int, cols: Int, values: [Float]) {
        precondition(values.count == rows * cols, "DenseMatrix: \(values.count) values for \(rows)x\(cols)")
        let buffer = AlignedBuffer(byteCount: rows * cols * 4)
        values.withUnsafeBufferPointer { buffer.pointer.copyMemory(from: $0.baseAddress!, byteCount: rows * cols * 4) }
        self.init(rows: rows, cols: cols, elementType: .f32, base: buffer.pointer, owner: buffer)
    }

    /// Bytes of weights the matrix occupies.
    public var byteCount: Int { rows * elementType.rowBytes(cols: cols) }

    /// Element (r, c) as a float; for tests and reference code, not hot paths.
    public func element(_ r: Int, _ c: Int) -> Float {
        let i = r * cols + c
        switch elementType {
        case .f32: return base.load(fromByteOffset: i * 4, as: Float.self)
        case .f16: return floatFromHalfBits(base.load(fromByteOffset: i * 2, as: UInt16.self))
        case .bf16: return Float(bitPattern: UInt32(base.load(fromByteOffset: i * 2, as: UInt16.self)) << 16)
        case .q8_0:
            let block = base + r * elementType.rowBytes(cols: cols) + c / 32 * 34
            let d = floatFromHalfBits(block.loadUnaligned(as: UInt16.self))
            return d * Float(block.load(fromByteOffset: 2 + c % 32, as: Int8.self))
        }
    }

    /// Row r as floats into `out` (cols values): the embedding lookup.
    public func row(_ r: Int, into out: UnsafeMutablePointer<Float>) {
        let start = base + r * elementType.rowBytes(cols: cols)
        switch elementType {
        case .f32: out.update(from: start.assumingMemoryBound(to: Float.self), count: cols)
        case .f16: for c in 0..<cols { out[c] = floatFromHalfBits(start.loadUnaligned(fromByteOffset: 2 * c, as: UInt16.self)) }
        case .bf16: for c in 0..<cols { out[c] = Float(bitPattern: UInt32(start.loadUnaligned(fromByteOffset: 2 * c, as: UInt16.self)) << 16) }
        case .q8_0:
            for b in 0..<(cols / 32) {
                let block = start + 34 * b
                let d = floatFromHalfBits(block.loadUnaligned(as: UInt16.self))
                for i in 0..<32 { out[32 * b + i] = d * Float(block.load(fromByteOffset: 2 + i, as: Int8.self)) }
            }
        }
    }

    /// Quantizes float32 values (row-major) to `type` in a new aligned buffer. Q8_0 as ggml does
    /// it: d = amax/127 per block (stored as float16), q = round(w/d).
    public static func quantized(rows: Int, cols: Int, values: UnsafeBufferPointer<Float>, type: ElementType) -> DenseMatrix {
        precondition(values.count == rows * cols, "DenseMatrix: \(values.count) values for \(rows)x\(cols)")
        precondition(type.holds(cols: cols), "DenseMatrix: Q8_0 rows must be a multiple of 32 long, not \(cols)")
        let buffer = AlignedBuffer(uninitializedByteCount: rows * type.rowBytes(cols: cols))  // written whole below
        convert(values.baseAddress!, count: rows * cols, to: type, into: buffer.pointer)
        return DenseMatrix(rows: rows, cols: cols, elementType: type, base: buffer.pointer, owner: buffer)
    }

    /// As `quantized(values:)`, from float32 rows that `fill` writes a block at a time (rows
    /// `range` into its buffer, [range.count, cols]): loading then never holds a float32 copy of
    /// the whole matrix (393 MiB for a 50304 × 2048 embedding stored as float16).
    public static func quantized(rows: Int, cols: Int, type: ElementType, blockRows: Int? = nil,
                                 fill: (Range<Int>, UnsafeMutablePointer<Float>) throws -> Void) rethrows -> DenseMatrix {
        precondition(type.holds(cols: cols), "DenseMatrix: Q8_0 rows must be a multiple of 32 long, not \(cols)")
        let rowBytes = type.rowBytes(cols: cols)
        let buffer = AlignedBuffer(uninitializedByteCount: rows * rowBytes)  // written whole below
        let block = max(1, min(rows, blockRows ?? (1 << 20) / max(cols, 1)))  // 4 MiB of float32 by default
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: max(1, block * cols))
        defer { scratch.deallocate() }
        var r = 0
        while r < rows {
            let n = min(block, rows - r)
            try fill(r..<(r + n), scratch)
            convert(scratch, count: n * cols, to: type, into: buffer.pointer + r * rowBytes)
            r += n
        }
        return DenseMatrix(rows: rows, cols: cols, elementType: type, base: buffer.pointer, owner: buffer)
    }

    /// `count` float32 values as `type` at `dst` (whole rows, so Q8_0 blocks never straddle a call).
    private static func convert(_ src: UnsafePointer<Float>, count: Int, to type: ElementType, into dst: UnsafeMutableRawPointer) {
        switch type {
        case .f32:
            dst.copyMemory(from: src, byteCount: count * 4)
        case .f16:
            let d = dst.bindMemory(to: UInt16.self, capacity: count)
            for i in 0..<count { d[i] = halfBitsFromFloat(src[i]) }
        case .bf16:
            let d = dst.bindMemory(to: UInt16.self, capacity: count)
            for i in 0..<count { d[i] = bfloat16BitsFromFloat(src[i]) }
        case .q8_0:
            for b in 0..<(count / 32) {
                let block = dst + 34 * b, w = src + 32 * b
                var amax: Float = 0
                for i in 0..<32 { amax = max(amax, abs(w[i])) }
                let d = amax / 127, inv = amax > 0 ? 127 / amax : 0
                block.storeBytes(of: halfBitsFromFloat(d), as: UInt16.self)
                for i in 0..<32 { block.storeBytes(of: Int8((w[i] * inv).rounded(.toNearestOrEven)), toByteOffset: 2 + i, as: Int8.self) }
            }
        }
    }
}

/// IEEE half bits to float, exact (subnormals, infinities and NaN included).
@inlinable
public func floatFromHalfBits(_ h: UInt16) -> Float {
    let sign = UInt32(h & 0x8000) << 16
    let exponent = Int((h >> 10) & 0x1F)
    let mantissa = UInt32(h & 0x3FF)
    if exponent == 0 {
        // Subnormal or zero: mantissa * 2^-24.
        let magnitude = Float(mantissa) * 0x1p-24
        return sign == 0 ? magnitude : -magnitude
    }
    if exponent == 31 {
        return Float(bitPattern: sign | 0x7F80_0000 | (mantissa << 13))
    }
    return Float(bitPattern: sign | (UInt32(exponent + 112) << 23) | (mantissa << 13))
}

/// Float to IEEE half bits, round to nearest even.
@inlinable
public func halfBitsFromFloat(_ f: Float) -> UInt16 {
    Float16(f).bitPattern
}

/// Float to bfloat16 bits, round to nearest even (NaN kept quiet).
@inlinable
public func bfloat16BitsFromFloat(_ f: Float) -> UInt16 {
    let bits = f.bitPattern
    if f.isNaN { return UInt16(bits >> 16) | 0x40 }
    let rounding = 0x7FFF + ((bits >> 16) & 1)
    return UInt16((bits &+ rounding) >> 16)
}
