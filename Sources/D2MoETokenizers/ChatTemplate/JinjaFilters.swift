import Foundation

extension JinjaBuiltins {
    static func keyword(_ kwargs: KWArgs, _ name: String) -> JinjaValue? { kwargs.first { $0.0 == name }?.1 }

    static func filter(_ name: String, _ v: JinjaValue, _ args: Args, _ kwargs: KWArgs) throws -> JinjaValue {
        switch name {
        case "trim":
            guard case .string(let s) = v else { return v == .undefined ? .string("") : v }
            return .string(s.trimmingWhitespace())
        case "length", "count":
            switch v {
            case .string(let s): return .int(s.unicodeScalars.count)
            case .array(let a): return .int(a.count)
            case .object(let o): return .int(o.keys.count)
            case .undefined: return .int(0)
            default: throw TemplateError("a \(v.typeName) has no length")
            }
        case "tojson":
            let indent = try (keyword(kwargs, "indent") ?? args.first).flatMap { $0 == .none ? nil : try integer($0) }
            let sortKeys = keyword(kwargs, "sort_keys")?.isTruthy ?? false
            var separators = indent == nil ? (", ", ": ") : (",", ": ")
            if case .array(let seps)? = keyword(kwargs, "separators"), seps.count == 2 {
                separators = (seps[0].rendered, seps[1].rendered)
            }
            var out = ""
            try JSONOut(indent: indent, itemSeparator: separators.0, keySeparator: separators.1, sortKeys: sortKeys).write(v, depth: 0, into: &out)
            return .string(out)
        case "string": return .string(v.rendered)
        case "upper": return .string(try string(v, name).uppercased())
        case "lower": return .string(try string(v, name).lowercased())
        case "title": return .string(titleCase(try string(v, name)))
        case "capitalize":
            let s = try string(v, name)
            return .string(s.prefix(1).uppercased() + s.dropFirst().lowercased())
        case "replace":
            guard args.count >= 2 else { throw TemplateError("replace takes two arguments") }
            return .string(splitBytes(try string(v, name), try string(args[0], name), limit: -1).joined(separator: try string(args[1], name)))
        case "join":
            let sep = try args.first.map { try string($0, name) } ?? ""
            var items = try iterate(v)
            if let attr = keyword(kwargs, "attribute") { items = try items.map { try attribute($0, attr.rendered) } }
            return .string(items.map(\.rendered).joined(separator: sep))
        case "first": return try iterate(v).first ?? .undefined
        case "last": return try iterate(v).last ?? .undefined
        case "list": return .array(try iterate(v))
        case "reverse":
            if case .string(let s) = v { return .string(String(String.UnicodeScalarView(s.unicodeScalars.reversed()))) }
            return .array(try iterate(v).reversed())
        case "unique":
            var seen: [JinjaValue] = []
            for x in try iterate(v) where !seen.contains(x) { seen.append(x) }
            return .array(seen)
        case "items":
            guard case .object(let o) = v else { return .array([]) }
            return .array(zip(o.keys, o.values).map { .array([.string($0), $1]) })
        case "default", "d":
            let fallback = args.first ?? .string("")
            let boolean = (args.count > 1 ? args[1] : keyword(kwargs, "boolean") ?? .bool(false)).isTruthy
            return v == .undefined || (boolean && !v.isTruthy) ? fallback : v
        case "int":
            switch v {
            case .int: return v
            case .double(let d): return .int(Int(d))
            case .string(let s): return .int(Int(s.trimmingWhitespace()) ?? 0)
            case .bool(let b): return .int(b ? 1 : 0)
            default: return .int(0)
            }
        case "float":
            switch v {
            case .int(let i): return .double(Double(i))
            case .double: return v
            case .string(let s): return .double(Double(s.trimmingWhitespace()) ?? 0)
            default: return .double(0)
            }
        case "abs":
            if case .int(let i) = v { return .int(abs(i)) }
            if case .double(let d) = v { return .double(abs(d)) }
            throw TemplateError("abs of a \(v.typeName)")
        case "round":
            let digits = try args.first.map(integer) ?? 0
            guard case .double(let d) = v else { return v }
            let scale = pow(10, Double(digits))
            return .double((d * scale).rounded(.toNearestOrEven) / scale)
        case "indent":
            let width = try args.first.map(integer) ?? 4
            let first = (args.count > 1 ? args[1] : keyword(kwargs, "first") ?? .bool(false)).isTruthy
            let pad = String(repeating: " ", count: width)
            let lines = splitBytes(try string(v, name), "\n", limit: -1)
            return .string(lines.enumerated().map { i, l in (i == 0 && !first) || l.isEmpty ? l : pad + l }.joined(separator: "\n"))
        case "safe": return v
        case "escape", "e":
            var out = ""
            for c in v.rendered.unicodeScalars {
                switch c {
                case "&": out += "&amp;"
                case "<": out += "&lt;"
                case ">": out += "&gt;"
                case "\"": out += "&#34;"
                case "'": out += "&#39;"
                default: out.unicodeScalars.append(c)
                }
            }
            return .string(out)
        case "wordcount": return .int(try string(v, name).split(whereSeparator: { $0.isWhitespace }).count)
        case "map":
            let items = try iterate(v)
            if let attr = keyword(kwargs, "attribute") {
                return .array(try items.map { try attribute($0, attr.rendered) == .undefined ? keyword(kwargs, "default") ?? .undefined : try attribute($0, attr.rendered) })
            }
            guard let f = args.first else { throw TemplateError("map needs a filter name or attribute=") }
            return .array(try items.map { try filter(f.rendered, $0, Array(args.dropFirst()), []) })
        case "select", "reject":
            guard let testName = args.first else { return .array(try iterate(v).filter { ($0.isTruthy) == (name == "select") }) }
            return .array(try iterate(v).filter { try test(testName.rendered, $0, Array(args.dropFirst())) == (name == "select") })
        case "selectattr", "rejectattr":
            guard let attr = args.first else { throw TemplateError("\(name) needs an attribute name") }
            return .array(try iterate(v).filter { item in
                let value = try attribute(item, attr.rendered)
                let passed = args.count > 1 ? try test(args[1].rendered, value, Array(args.dropFirst(2))) : value.isTruthy
                return passed == (name == "selectattr")
            })
        case "sort":
            let reverse = keyword(kwargs, "reverse")?.isTruthy ?? false
            let attr = keyword(kwargs, "attribute")?.rendered
            let sorted = try iterate(v).sorted { a, b in
                let x = try attr.map { try attribute(a, $0) } ?? a, y = try attr.map { try attribute(b, $0) } ?? b
                return (try? binary("<", x, y).isTruthy) ?? false
            }
            return .array(reverse ? sorted.reversed() : sorted)
        default:
            throw TemplateError("filter '\(name)' is not supported by this template engine")
        }
    }

    static func test(_ name: String, _ v: JinjaValue, _ args: Args) throws -> Bool {
        switch name {
        case "defined": return v != .undefined
        case "undefined": return v == .undefined
        case "none": return v == .none
        case "string": if case .string = v { return true }; return false
        case "number": switch v { case .int, .double: return true; default: return false }
        case "integer": if case .int = v { return true }; return false
        case "float": if case .double = v { return true }; return false
        case "boolean": if case .bool = v { return true }; return false
        case "true": return v == .bool(true)
        case "false": return v == .bool(false)
        case "mapping": switch v { case .object, .namespace: return true; default: return false }
        case "sequence", "iterable": switch v { case .array, .string, .object: return true; default: return false }
        case "callable": if case .function = v { return true }; return false
        case "odd": return try integer(v) % 2 != 0
        case "even": return try integer(v) % 2 == 0
        case "divisibleby": return try integer(v) % max(1, integer(args.first ?? .int(1))) == 0
        case "equalto", "eq", "==", "sameas": return v == (args.first ?? .undefined)
        case "ne", "!=": return v != (args.first ?? .undefined)
        case "in": return try binary("in", v, args.first ?? .undefined).isTruthy
        case "lower": return v.rendered == v.rendered.lowercased()
        case "upper": return v.rendered == v.rendered.uppercased()
        case "gt", ">": return try binary(">", v, args.first ?? .undefined).isTruthy
        case "lt", "<": return try binary("<", v, args.first ?? .undefined).isTruthy
        case "ge", ">=": return try binary(">=", v, args.first ?? .undefined).isTruthy
        case "le", "<=": return try binary("<=", v, args.first ?? .undefined).isTruthy
        default: throw TemplateError("test '\(name)' is not supported by this template engine")
        }
    }

    static func binary(_ op: String, _ a: JinjaValue, _ b: JinjaValue) throws -> JinjaValue {
        switch op {
        case "==": return .bool(a == b)
        case "!=": return .bool(a != b)
        case "~": return .string(a.rendered + b.rendered)
        case "in":
            switch b {
            case .string(let s):
                let needle = Array(try string(a, "in").utf8)
                return .bool(needle.isEmpty || Array(s.utf8).firstRange(of: needle) != nil)
            case .array(let items): return .bool(items.contains(a))
            case .object(let o): if case .string(let k) = a { return .bool(o[k] != nil) }; return .bool(false)
            case .undefined: throw TemplateError("'in' on an undefined value")
            default: throw TemplateError("'in' needs a string, list or dict on the right, got a \(b.typeName)")
            }
        default: break
        }
        switch (a, b) {
        case (.string(let x), .string(let y)):
            switch op {
            case "+": return .string(x + y)
            case "<": return .bool(x.unicodeScalars.lexicographicallyPrecedes(y.unicodeScalars))
            case ">": return .bool(y.unicodeScalars.lexicographicallyPrecedes(x.unicodeScalars))
            case "<=": return .bool(!y.unicodeScalars.lexicographicallyPrecedes(x.unicodeScalars))
            case ">=": return .bool(!x.unicodeScalars.lexicographicallyPrecedes(y.unicodeScalars))
            default: break
            }
        case (.string(let x), .int(let n)) where op == "*": return .string(String(repeating: x, count: max(0, n)))
        case (.array(let x), .array(let y)) where op == "+": return .array(x + y)
        case (.int(let x), .int(let y)):
            switch op {
            case "+": return .int(x + y)
            case "-": return .int(x - y)
            case "*": return .int(x * y)
            case "/": guard y != 0 else { throw TemplateError("division by zero") }; return .double(Double(x) / Double(y))
            case "//": guard y != 0 else { throw TemplateError("division by zero") }; return .int(Int((Double(x) / Double(y)).rounded(.down)))
            case "%": guard y != 0 else { throw TemplateError("modulo by zero") }; return .int(((x % y) + y) % y)
            case "**": return y >= 0 ? .int(Int(pow(Double(x), Double(y)))) : .double(pow(Double(x), Double(y)))
            case "<": return .bool(x < y)
            case ">": return .bool(x > y)
            case "<=": return .bool(x <= y)
            case ">=": return .bool(x >= y)
            default: break
            }
        default:
            if let x = number(a), let y = number(b) {
                switch op {
                case "+": return .double(x + y)
                case "-": return .double(x - y)
                case "*": return .double(x * y)
                case "/": guard y != 0 else { throw TemplateError("division by zero") }; return .double(x / y)
                case "//": return .double((x / y).rounded(.down))
                case "%": return .double(x - y * (x / y).rounded(.down))
                case "**": return .double(pow(x, y))
                case "<": return .bool(x < y)
                case ">": return .bool(x > y)
                case "<=": return .bool(x <= y)
                case ">=": return .bool(x >= y)
                default: break
                }
            }
        }
        throw TemplateError("unsupported operand types for \(op): \(a.typeName) and \(b.typeName)")
    }

    static func number(_ v: JinjaValue) -> Double? {
        switch v {
        case .int(let i): return Double(i)
        case .double(let d): return d
        case .bool(let b): return b ? 1 : 0
        default: return nil
        }
    }
}

/// `json.dumps(..., ensure_ascii=False)` as Hugging Face's `tojson` calls it.
struct JSONOut {
    let indent: Int?
    let itemSeparator: String
    let keySeparator: String
    let sortKeys: Bool

    func write(_ v: JinjaValue, depth: Int, into out: inout String) throws {
        switch v {
        case .undefined, .none: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .int(let i): out += String(i)
        case .double(let d): out += d.isFinite ? JinjaValue.pythonFloat(d) : (d.isNaN ? "NaN" : d < 0 ? "-Infinity" : "Infinity")
        case .string(let s): JSONOut.quote(s, into: &out)
        case .array(let items):
            try container("[", "]", items.count, depth, &out) { i, o in try write(items[i], depth: depth + 1, into: &o) }
        case .object(let obj):
            let order = sortKeys ? obj.keys.indices.sorted { obj.keys[$0].unicodeScalars.lexicographicallyPrecedes(obj.keys[$1].unicodeScalars) } : Array(obj.keys.indices)
            try container("{", "}", order.count, depth, &out) { i, o in
                JSONOut.quote(obj.keys[order[i]], into: &o)
                o += keySeparator
                try write(obj.values[order[i]], depth: depth + 1, into: &o)
            }
        case .namespace(let ns): try write(.object(ns.attributes), depth: depth, into: &out)
        case .function: throw TemplateError("a function cannot be converted to JSON")
        }
    }

    private func container(_ open: String, _ close: String, _ count: Int, _ depth: Int, _ out: inout String,
                           _ element: (Int, inout String) throws -> Void) throws {
        out += open
        guard count > 0 else { out += close; return }
        for i in 0..<count {
            if i > 0 { out += itemSeparator }
            if let indent { out += "\n" + String(repeating: " ", count: indent * (depth + 1)) }
            try element(i, &out)
        }
        if let indent { out += "\n" + String(repeating: " ", count: indent * depth) }
        out += close
    }

    static func quote(_ s: String, into out: inout String) {
        out += "\""
        for c in s.unicodeScalars {
            switch c {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            default:
                if c.value < 0x20 { out += String(format: "\\u%04x", c.value) } else { out.unicodeScalars.append(c) }
            }
        }
        out += "\""
    }
}
