// The quantized block formats of ggml that real GGUF files use, each dequantized exactly as ggml
// defines it. Multi-byte fields are little-endian; "fp16" is IEEE half.

@inline(__always)
func halfToFloat(_ b: UnsafeRawPointer, _ offset: Int) -> Float {
    Float(Float16(bitPattern: b.loadUnaligned(fromByteOffset: offset, as: UInt16.self)))
}

/// Q4_0: 32 weights in 18 bytes (4.5 bits/weight): fp16 d, then 16 bytes of 4-bit codes
/// (low nibbles are weights 0–15, high nibbles 16–31); w = (q − 8)·d.
enum Q4_0Block {
    static let bytes = 2 + 16
    static func dequantize(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = halfToFloat(b, 0)
        let qs = b + 2
        for j in 0..<16 {
            let q = qs.load(fromByteOffset: j, as: UInt8.self)
            y[j] = Float(Int(q & 0x0F) - 8) * d
            y[j + 16] = Float(Int(q >> 4) - 8) * d
        }
    }
}

/// Q4_1: 32 weights in 20 bytes (5 bits/weight): fp16 d, fp16 m, 16 bytes of 4-bit codes
/// (nibble order as Q4_0); w = q·d + m.
enum Q4_1Block {
    static let bytes = 4 + 16
    static func dequantize(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = halfToFloat(b, 0), m = halfToFloat(b, 2)
        let qs = b + 4
        for j in 0..<16 {
            let q = qs.load(fromByteOffset: j, as: UInt8.self)
            y[j] = Float(q & 0x0F) * d + m
            y[j + 16] = Float(q >> 4) * d + m
        }
    }
}

/// Q5_0: 32 weights in 22 bytes (5.5 bits/weight): fp16 d, 32 high bits (u32), 16 bytes of low
/// nibbles; w = (q − 16)·d with q = nibble | high bit << 4.
enum Q5_0Block {
    static let bytes = 2 + 4 + 16
    static func dequantize(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = halfToFloat(b, 0)
        let qh = UInt32(littleEndian: b.loadUnaligned(fromByteOffset: 2, as: UInt32.self))
        let qs = b + 6
        for j in 0..<16 {
            let q = qs.load(fromByteOffset: j, as: UInt8.self)
            let h0 = Int(((qh >> UInt32(j)) << 4) & 0x10), h1 = Int((qh >> UInt32(j + 12)) & 0x10)
            y[j] = Float((Int(q & 0x0F) | h0) - 16) * d
            y[j + 16] = Float((Int(q >> 4) | h1) - 16) * d
        }
    }
}

/// Q5_1: 32 weights in 24 bytes (6 bits/weight): fp16 d, fp16 m, u32 high bits, 16 bytes of low
/// nibbles; w = q·d + m.
enum Q5_1Block {
    static let bytes = 4 + 4 + 16
    static func dequantize(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = halfToFloat(b, 0), m = halfToFloat(b, 2)
        let qh = UInt32(littleEndian: b.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
        let qs = b + 8
        for j in 0..<16 {
            let q = qs.load(fromByteOffset: j, as: UInt8.self)
            let h0 = Int(((qh >> UInt32(j)) << 4) & 0x10), h1 = Int((qh >> UInt32(j + 12)) & 0x10)
            y[j] = Float(Int(q & 0x0F) | h0) * d + m
            y[j + 16] = Float(Int(q >> 4) | h1) * d + m
        }
    }
}

/// Q8_0: 32 weights in 34 bytes (8.5 bits/weight): fp16 d, 32 int8 codes; w = q·d.
enum Q8_0Block {
    static let bytes = 2 + 32
    static func dequantize(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = halfToFloat(b, 0)
        for j in 0..<32 { y[j] = Float(b.load(fromByteOffset: 2 + j, as: Int8.self)) * d }
    }
}

/// The 6-bit scale and min of sub-block j packed in the 12 scale bytes of Q4_K and Q5_K.
@inline(__always)
func kScaleMin(_ j: Int, _ q: UnsafeRawPointer) -> (Float, Float) {
    func byte(_ i: Int) -> UInt8 { q.load(fromByteOffset: i, as: UInt8.self) }
    if j < 4 { return (Float(byte(j) & 63), Float(byte(j + 4) & 63)) }
    return (Float((byte(j + 4) & 0x0F) | ((byte(j - 4) >> 6) << 4)), Float((byte(j + 4) >> 4) | ((byte(j) >> 6) << 4)))
}

/// Q4_K: 256 weights in 144 bytes (4.5 bits/weight): fp16 d, fp16 dmin, 12 bytes of 6-bit
/// scales and mins for 8 sub-blocks of 32, 128 bytes of 4-bit codes (each 32 bytes hold two
/// sub-blocks: low then high nibbles); w = d·sc·q − dmin·m.
enum Q4_KBlock {
    static let bytes = 2 + 2 + 12 + 128
    static func dequantize(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = halfToFloat(b, 0), dmin = halfToFloat(b, 2)
        let scales = b + 4
        var q = b + 16
        var out = y
        for pair in 0..<4 {
            let (sc1, m1) = kScaleMin(2 * pair, scales), (sc2, m2) = kScaleMin(2 * pair + 1, scales)
            let d1 = d * sc1, min1 = dmin * m1, d2 = d * sc2, min2 = dmin * m2
            for l in 0..<32 { out[l] = d1 * Float(q.load(fromByteOffset: l, as: UInt8.self) & 0x0F) - min1 }
            for l in 0..<32 { out[l + 32] = d2 * Float(q.load(fromByteOffset: l, as: UInt8.self) >> 4) - min2 }
            q += 32
            out += 64
        }
    }
}

/// Q5_K: 256 weights in 176 bytes (5.5 bits/weight): fp16 d, fp16 dmin, 12 scale bytes as Q4_K,
/// 32 bytes of high bits (bit 2i and 2i+1 of byte l for sub-blocks 2i, 2i+1), 128 bytes of low
/// nibbles; w = d·sc·(q + 16·h) − dmin·m.
enum Q5_KBlock {
    static let bytes = 2 + 2 + 12 + 32 + 128
    static func dequantize(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = halfToFloat(b, 0), dmin = halfToFloat(b, 2)
        let scales = b + 4, qh = b + 16
        var ql = b + 48
        var out = y
        var u1: UInt8 = 1, u2: UInt8 = 2
        for pair in 0..<4 {
            let (sc1, m1) = kScaleMin(2 * pair, scales), (sc2, m2) = kScaleMin(2 * pair + 1, scales)
            let d1 = d * sc1, min1 = dmin * m1, d2 = d * sc2, min2 = dmin * m2
            for l in 0..<32 {
                let h = qh.load(fromByteOffset: l, as: UInt8.self), q = ql.load(fromByteOffset: l, as: UInt8.self)
                out[l] = d1 * Float(Int(q & 0x0F) + (h & u1 != 0 ? 16 : 0)) - min1
                out[l + 32] = d2 * Float(Int(q >> 4) + (h & u2 != 0 ? 16 : 0)) - min2
            }
            ql += 32
            out += 64
            u1 <<= 2
            u2 <<= 2
        }
    }
}

/// Q6_K: 256 weights in 210 bytes (6.5625 bits/weight): 128 bytes of low nibbles, 64 bytes of
/// 2-bit high parts, 16 int8 scales (one per 16 weights), fp16 d; w = d·scale·(q − 32).
enum Q6_KBlock {
    static let bytes = 128 + 64 + 16 + 2
    static func dequantize(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = halfToFloat(b, 208)
        var ql = b, qh = b + 128, sc = b + 192
        var out = y
        for _ in 0..<2 {
            for l in 0..<32 {
                let s = l / 16
                let lo0 = ql.load(fromByteOffset: l, as: UInt8.self), lo1 = ql.load(fromByteOffset: l + 32, as: UInt8.self)
                let h = qh.load(fromByteOffset: l, as: UInt8.self)
                let q1 = Int((lo0 & 0x0F) | ((h & 3) << 4)) - 32
                let q2 = Int((lo1 & 0x0F) | (((h >> 2) & 3) << 4)) - 32
                let q3 = Int((lo0 >> 4) | (((h >> 4) & 3) << 4)) - 32
                let q4 = Int((lo1 >> 4) | (((h >> 6) & 3) << 4)) - 32
                func scale(_ i: Int) -> Float { Float(sc.load(fromByteOffset: i, as: Int8.self)) }
                out[l] = d * scale(s) * Float(q1)
                out[l + 32] = d * scale(s + 2) * Float(q2)
                out[l + 64] = d * scale(s + 4) * Float(q3)
                out[l + 96] = d * scale(s + 6) * Float(q4)
            }
            out += 128
            ql += 64
            qh += 32
            sc += 8
        }
    }
}
