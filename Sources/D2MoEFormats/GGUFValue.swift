/// A GGUF metadata value. Arrays are kept typed (a 262,144-entry vocabulary is one `[String]`,
/// not 262,144 boxed values).
public enum GGUFValue: Sendable, Equatable {
    case int(Int64)
    case uint(UInt64)
    case float(Double)
    case bool(Bool)
    case string(String)
    case array(GGUFArray)

    public var string: String? { if case .string(let s) = self { return s } else { return nil } }
    public var bool: Bool? { if case .bool(let b) = self { return b } else { return nil } }

    /// Any integer value that fits an Int.
    public var int: Int? {
        switch self {
        case .int(let v): return Int(exactly: v)
        case .uint(let v): return Int(exactly: v)
        default: return nil
        }
    }

    /// Any numeric value as a Double.
    public var double: Double? {
        switch self {
        case .float(let v): return v
        case .int(let v): return Double(v)
        case .uint(let v): return Double(v)
        default: return nil
        }
    }

    public var stringArray: [String]? { if case .array(.strings(let a)) = self { return a } else { return nil } }
    public var intArray: [Int64]? { if case .array(.ints(let a)) = self { return a } else { return nil } }
    public var floatArray: [Double]? { if case .array(.floats(let a)) = self { return a } else { return nil } }
}

/// A typed GGUF array. Integer element types are widened to Int64, floats to Double.
public enum GGUFArray: Sendable, Equatable {
    case ints([Int64])
    case floats([Double])
    case bools([Bool])
    case strings([String])
    case arrays([GGUFArray])

    public var count: Int {
        switch self {
        case .ints(let a): return a.count
        case .floats(let a): return a.count
        case .bools(let a): return a.count
        case .strings(let a): return a.count
        case .arrays(let a): return a.count
        }
    }
}

/// The on-disk value type ids of GGUF.
enum GGUFValueType: UInt32 {
    case uint8 = 0, int8, uint16, int16, uint32, int32, float32, bool, string, array, uint64, int64, float64

    var byteSize: Int? {
        switch self {
        case .uint8, .int8, .bool: return 1
        case .uint16, .int16: return 2
        case .uint32, .int32, .float32: return 4
        case .uint64, .int64, .float64: return 8
        case .string, .array: return nil
        }
    }
}

extension ByteCursor {
    /// Strings longer than this are taken as corruption rather than allocated.
    static let maxStringBytes = 1 << 30

    mutating func readString(_ what: @autoclosure () -> String) throws -> String {
        let n = try read(UInt64.self, "length of \(what())")
        guard n <= UInt64(Self.maxStringBytes), n <= UInt64(file.size) else {
            throw FormatError(file.path, "\(what()) claims a length of \(n) bytes, more than the file holds")
        }
        let b = try take(Int(n), what())
        return String(decoding: b, as: UTF8.self)
    }

    mutating func readValue(type raw: UInt32, _ what: String, depth: Int = 0) throws -> GGUFValue {
        guard let type = GGUFValueType(rawValue: raw) else {
            throw FormatError(file.path, "\(what) has unknown value type \(raw)")
        }
        switch type {
        case .uint8: return .uint(UInt64(try read(UInt8.self, what)))
        case .int8: return .int(Int64(try read(Int8.self, what)))
        case .uint16: return .uint(UInt64(try read(UInt16.self, what)))
        case .int16: return .int(Int64(try read(Int16.self, what)))
        case .uint32: return .uint(UInt64(try read(UInt32.self, what)))
        case .int32: return .int(Int64(try read(Int32.self, what)))
        case .uint64: return .uint(try read(UInt64.self, what))
        case .int64: return .int(try read(Int64.self, what))
        case .float32: return .float(Double(try readFloat(what)))
        case .float64: return .float(try readDouble(what))
        case .bool:
            let b = try read(UInt8.self, what)
            guard b <= 1 else { throw FormatError(file.path, "\(what) is a bool with value \(b)") }
            return .bool(b == 1)
        case .string: return .string(try readString(what))
        case .array: return .array(try readArray(what, depth: depth))
        }
    }

    mutating func readArray(_ what: String, depth: Int) throws -> GGUFArray {
        guard depth < 8 else { throw FormatError(file.path, "\(what) nests arrays more than 8 deep") }
        let raw = try read(UInt32.self, "element type of \(what)")
        guard let type = GGUFValueType(rawValue: raw) else {
            throw FormatError(file.path, "\(what) has unknown element type \(raw)")
        }
        let count = try read(UInt64.self, "length of \(what)")
        // Every element takes at least one byte, so a count beyond the remaining bytes is corrupt.
        guard count <= UInt64(file.size - offset) else {
            throw FormatError(file.path, "\(what) claims \(count) elements, more than the file holds")
        }
        let n = Int(count)
        if let size = type.byteSize, n * size > file.size - offset {
            throw FormatError(file.path, "\(what) [\(n) elements] extends past the end of the file (\(file.size) bytes)")
        }
        switch type {
        case .string:
            var a: [String] = []
            a.reserveCapacity(n)
            for i in 0..<n { a.append(try readString("\(what)[\(i)]")) }
            return .strings(a)
        case .array:
            var a: [GGUFArray] = []
            for i in 0..<n { a.append(try readArray("\(what)[\(i)]", depth: depth + 1)) }
            return .arrays(a)
        case .bool:
            return .bools(try (0..<n).map { _ in try read(UInt8.self, what) != 0 })
        case .float32:
            return .floats(try (0..<n).map { _ in Double(try readFloat(what)) })
        case .float64:
            return .floats(try (0..<n).map { _ in try readDouble(what) })
        default:
            var a = [Int64](repeating: 0, count: n)
            for i in 0..<n {
                switch try readValue(type: raw, what) {
                case .int(let v): a[i] = v
                case .uint(let v): a[i] = Int64(bitPattern: v)
                default: break
                }
            }
            return .ints(a)
        }
    }
}
