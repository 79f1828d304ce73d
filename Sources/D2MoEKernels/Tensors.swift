/// Element types of dense weight matrices the float kernels read directly.
public enum ElementType: String, Sendable, CaseIterable {
    case f32, f16, bf16

    /// Bytes per element.
    public var byteCount: Int { self == .f32 ? 4 : 2 }
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
    /// First element; row r starts at `base + r * cols * elementType.byteCount`.
    public let base: UnsafeRawPointer
    private let owner: AnyObject?

    /// Wraps memory owned by `owner` (an `AlignedBuffer`, a mapped file, ...).
    public init(rows: Int, cols: Int, elementType: ElementType, base: UnsafeRawPointer, owner: AnyObject?) {
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
    public var byteCount: Int { rows * cols * elementType.byteCount }

    /// Element (r, c) as a float; for tests and reference code, not hot paths.
    public func element(_ r: Int, _ c: Int) -> Float {
        let i = r * cols + c
        switch elementType {
        case .f32: return base.load(fromByteOffset: i * 4, as: Float.self)
        case .f16: return floatFromHalfBits(base.load(fromByteOffset: i * 2, as: UInt16.self))
        case .bf16: return Float(bitPattern: UInt32(base.load(fromByteOffset: i * 2, as: UInt16.self)) << 16)
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
