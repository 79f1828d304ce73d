import Foundation

/// A value inside a chat template, with Python's semantics where Jinja borrows them (truthiness,
/// equality across int and float, `str()` of lists and dicts).
public indirect enum JinjaValue: Sendable, Equatable {
    case undefined
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([JinjaValue])
    /// Keys in insertion order, as Python dicts keep them (tojson output depends on it).
    case object(JinjaObject)
    case namespace(JinjaNamespace)
    case function(JinjaFunction)

    public static func == (a: JinjaValue, b: JinjaValue) -> Bool {
        switch (a, b) {
        case (.undefined, .undefined), (.none, .none): return true
        case (.bool(let x), .bool(let y)): return x == y
        case (.int(let x), .int(let y)): return x == y
        case (.int(let x), .double(let y)), (.double(let y), .int(let x)): return Double(x) == y
        case (.double(let x), .double(let y)): return x == y
        case (.bool(let x), .int(let y)), (.int(let y), .bool(let x)): return (x ? 1 : 0) == y
        case (.string(let x), .string(let y)): return x.unicodeScalars.elementsEqual(y.unicodeScalars)
        case (.array(let x), .array(let y)): return x == y
        case (.object(let x), .object(let y)): return x.keys == y.keys && x.values == y.values
        case (.namespace(let x), .namespace(let y)): return x === y
        default: return false
        }
    }

    /// Python truthiness.
    public var isTruthy: Bool {
        switch self {
        case .undefined, .none: return false
        case .bool(let b): return b
        case .int(let i): return i != 0
        case .double(let d): return d != 0
        case .string(let s): return !s.isEmpty
        case .array(let a): return !a.isEmpty
        case .object(let o): return !o.keys.isEmpty
        case .namespace, .function: return true
        }
    }

    /// What `{{ value }}` prints (Python's `str`).
    public var rendered: String {
        switch self {
        case .undefined: return ""
        case .string(let s): return s
        default: return repr(quoteStrings: false)
        }
    }

    func repr(quoteStrings: Bool = true) -> String {
        switch self {
        case .undefined: return ""
        case .none: return "None"
        case .bool(let b): return b ? "True" : "False"
        case .int(let i): return String(i)
        case .double(let d): return JinjaValue.pythonFloat(d)
        case .string(let s): return quoteStrings ? JinjaValue.pythonQuote(s) : s
        case .array(let a): return "[" + a.map { $0.repr() }.joined(separator: ", ") + "]"
        case .object(let o): return "{" + zip(o.keys, o.values).map { "\(JinjaValue.pythonQuote($0)): \($1.repr())" }.joined(separator: ", ") + "}"
        case .namespace: return "<Namespace>"
        case .function(let f): return "<function \(f.name)>"
        }
    }

    static func pythonFloat(_ d: Double) -> String {
        if d.isNaN { return "nan" }
        if d.isInfinite { return d < 0 ? "-inf" : "inf" }
        if d == d.rounded() && abs(d) < 1e16 { return String(format: "%.1f", d) }
        return "\(d)"
    }

    static func pythonQuote(_ s: String) -> String {
        let quote: Character = s.contains("'") && !s.contains("\"") ? "\"" : "'"
        var out = String(quote)
        for c in s.unicodeScalars {
            switch c {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            default:
                if Character(c) == quote { out += "\\" }
                out.unicodeScalars.append(c)
            }
        }
        return out + String(quote)
    }

    var typeName: String {
        switch self {
        case .undefined: return "undefined"
        case .none: return "none"
        case .bool: return "boolean"
        case .int: return "integer"
        case .double: return "float"
        case .string: return "string"
        case .array: return "list"
        case .object: return "dict"
        case .namespace: return "namespace"
        case .function: return "function"
        }
    }
}

extension JinjaValue: Decodable {
    /// Decodes JSON: true/false stay booleans, whole numbers become ints.
    public init(from decoder: any Decoder) throws {
        if let keyed = try? decoder.container(keyedBy: AnyKey.self) {
            self = .object(JinjaObject(try keyed.allKeys.map { ($0.stringValue, try keyed.decode(JinjaValue.self, forKey: $0)) }))
            return
        }
        if var list = try? decoder.unkeyedContainer() {
            var items: [JinjaValue] = []
            while !list.isAtEnd { items.append(try list.decode(JinjaValue.self)) }
            self = .array(items)
            return
        }
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .none }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let i = try? c.decode(Int.self) { self = .int(i) }
        else if let d = try? c.decode(Double.self) { self = .double(d) }
        else { self = .string(try c.decode(String.self)) }
    }

    private struct AnyKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }
}

/// A dictionary that keeps insertion order.
public struct JinjaObject: Sendable, Equatable {
    public private(set) var keys: [String] = []
    public private(set) var values: [JinjaValue] = []

    public init(_ pairs: [(String, JinjaValue)] = []) {
        for (k, v) in pairs { self[k] = v }
    }

    public subscript(key: String) -> JinjaValue? {
        get { keys.firstIndex(of: key).map { values[$0] } }
        set {
            if let i = keys.firstIndex(of: key) {
                if let newValue { values[i] = newValue } else { keys.remove(at: i); values.remove(at: i) }
            } else if let newValue {
                keys.append(key)
                values.append(newValue)
            }
        }
    }
}

/// `namespace(...)`: the one mutable object templates have, so `set ns.x` inside a loop is seen after it.
public final class JinjaNamespace: @unchecked Sendable {
    var attributes = JinjaObject()
    init(_ attributes: JinjaObject) { self.attributes = attributes }
}

/// A callable: a built-in global, a bound string/dict method, or a macro.
public struct JinjaFunction: Sendable {
    let name: String
    let call: @Sendable ([JinjaValue], [(String, JinjaValue)]) throws -> JinjaValue
}
