import Foundation

/// The globals, filters, tests, operators and Python methods chat templates use.
enum JinjaBuiltins {
    typealias Args = [JinjaValue]
    typealias KWArgs = [(String, JinjaValue)]

    static func fn(_ name: String, _ body: @escaping @Sendable (Args, KWArgs) throws -> JinjaValue) -> JinjaValue {
        .function(JinjaFunction(name: name, call: body))
    }

    static let globals: [String: JinjaValue] = [
        "raise_exception": fn("raise_exception") { args, _ in
            throw TemplateError("the template raised an exception: \(args.first?.rendered ?? "")")
        },
        "range": fn("range") { args, _ in
            let n = try args.map(integer)
            switch n.count {
            case 1: return .array((0..<max(0, n[0])).map { .int($0) })
            case 2: return .array((n[0]..<max(n[0], n[1])).map { .int($0) })
            case 3 where n[2] != 0: return .array(stride(from: n[0], to: n[1], by: n[2]).map { .int($0) })
            default: throw TemplateError("range() takes 1 to 3 integer arguments")
            }
        },
        "namespace": fn("namespace") { args, kwargs in
            var o = JinjaObject()
            if case .object(let initial)? = args.first { o = initial }
            for (k, v) in kwargs { o[k] = v }
            return .namespace(JinjaNamespace(o))
        },
        "dict": fn("dict") { _, kwargs in .object(JinjaObject(kwargs)) },
    ]

    static func integer(_ v: JinjaValue) throws -> Int {
        switch v {
        case .int(let i): return i
        case .bool(let b): return b ? 1 : 0
        case .double(let d) where d == d.rounded(): return Int(d)
        default: throw TemplateError("expected an integer, got a \(v.typeName)")
        }
    }

    static func string(_ v: JinjaValue, _ what: String) throws -> String {
        guard case .string(let s) = v else { throw TemplateError("\(what) expects a string, got a \(v.typeName)") }
        return s
    }

    static func iterate(_ v: JinjaValue) throws -> [JinjaValue] {
        switch v {
        case .array(let a): return a
        case .object(let o): return o.keys.map { .string($0) }
        case .string(let s): return s.unicodeScalars.map { .string(String($0)) }
        case .undefined: return []
        default: throw TemplateError("a \(v.typeName) is not iterable")
        }
    }

    // MARK: Attributes, items, slices

    static func attribute(_ base: JinjaValue, _ name: String) throws -> JinjaValue {
        switch base {
        case .object(let o):
            if let v = o[name] { return v }
            return dictMethod(o, name) ?? .undefined
        case .namespace(let ns): return ns.attributes[name] ?? .undefined
        case .string(let s): return stringMethod(s, name) ?? .undefined
        case .array(let a): return listMethod(a, name) ?? .undefined
        case .undefined: throw TemplateError("cannot read attribute '\(name)' of an undefined value")
        case .none: throw TemplateError("cannot read attribute '\(name)' of none")
        default: return .undefined
        }
    }

    static func item(_ base: JinjaValue, _ index: JinjaValue) throws -> JinjaValue {
        switch (base, index) {
        case (.object, .string(let key)), (.namespace, .string(let key)): return try attribute(base, key)
        case (.array(let a), _):
            var i = try integer(index)
            if i < 0 { i += a.count }
            return i >= 0 && i < a.count ? a[i] : .undefined
        case (.string(let s), _):
            let scalars = Array(s.unicodeScalars)
            var i = try integer(index)
            if i < 0 { i += scalars.count }
            return i >= 0 && i < scalars.count ? .string(String(scalars[i])) : .undefined
        case (.undefined, _): throw TemplateError("cannot index an undefined value")
        case (.none, _): throw TemplateError("cannot index none")
        default: return .undefined
        }
    }

    static func slice(_ base: JinjaValue, _ a: JinjaValue?, _ b: JinjaValue?, _ c: JinjaValue?) throws -> JinjaValue {
        func indices(_ n: Int) throws -> [Int] {
            let step = try c.map(integer) ?? 1
            guard step != 0 else { throw TemplateError("slice step cannot be zero") }
            func clamp(_ v: JinjaValue?, _ fallback: Int) throws -> Int {
                guard let v, v != .none else { return fallback }
                var i = try integer(v)
                if i < 0 { i += n }
                return step > 0 ? min(max(i, 0), n) : min(max(i, -1), n - 1)
            }
            let start = try clamp(a, step > 0 ? 0 : n - 1), stop = try clamp(b, step > 0 ? n : -1)
            return Array(stride(from: start, to: stop, by: step))
        }
        switch base {
        case .array(let items): return .array(try indices(items.count).map { items[$0] })
        case .string(let s):
            let scalars = Array(s.unicodeScalars)
            return .string(String(String.UnicodeScalarView(try indices(scalars.count).map { scalars[$0] })))
        default: throw TemplateError("cannot slice a \(base.typeName)")
        }
    }

    // MARK: Python methods

    static func stringMethod(_ s: String, _ name: String) -> JinjaValue? {
        @Sendable func strip(_ args: Args, leading: Bool, trailing: Bool) throws -> JinjaValue {
            let chars: Set<Unicode.Scalar>? = try args.first.flatMap { $0 == .none ? nil : Set(try string($0, name).unicodeScalars) }
            func drop(_ c: Unicode.Scalar) -> Bool { chars.map { $0.contains(c) } ?? c.properties.isWhitespace }
            var scalars = Array(s.unicodeScalars)[...]
            if leading { while let f = scalars.first, drop(f) { scalars.removeFirst() } }
            if trailing { while let l = scalars.last, drop(l) { scalars.removeLast() } }
            return .string(String(String.UnicodeScalarView(scalars)))
        }
        switch name {
        case "strip": return fn(name) { a, _ in try strip(a, leading: true, trailing: true) }
        case "lstrip": return fn(name) { a, _ in try strip(a, leading: true, trailing: false) }
        case "rstrip": return fn(name) { a, _ in try strip(a, leading: false, trailing: true) }
        case "upper": return fn(name) { _, _ in .string(s.uppercased()) }
        case "lower": return fn(name) { _, _ in .string(s.lowercased()) }
        case "title": return fn(name) { _, _ in .string(titleCase(s)) }
        case "capitalize": return fn(name) { _, _ in .string(s.prefix(1).uppercased() + s.dropFirst().lowercased()) }
        case "startswith", "endswith":
            return fn(name) { a, _ in
                let candidates: [JinjaValue]
                if case .array(let options)? = a.first { candidates = options } else { candidates = Array(a.prefix(1)) }
                let bytes = Array(s.utf8)
                return .bool(try candidates.contains { c in
                    let p = Array(try string(c, name).utf8)
                    return name == "startswith" ? bytes.starts(with: p) : bytes.reversed().starts(with: p.reversed())
                })
            }
        case "split":
            return fn(name) { a, _ in
                let limit = try a.count > 1 ? integer(a[1]) : -1
                if a.isEmpty || a[0] == .none {
                    var parts = s.split(whereSeparator: { $0.isWhitespace }).map(String.init)
                    if limit >= 0 && parts.count > limit + 1 { parts = Array(parts.prefix(limit)) + [parts.dropFirst(limit).joined(separator: " ")] }
                    return .array(parts.map { .string($0) })
                }
                let sep = try string(a[0], "split")
                guard !sep.isEmpty else { throw TemplateError("split() separator is empty") }
                return .array(splitBytes(s, sep, limit: limit).map { .string($0) })
            }
        case "replace":
            return fn(name) { a, _ in
                guard a.count >= 2 else { throw TemplateError("replace() takes two strings") }
                let old = try string(a[0], name), new = try string(a[1], name)
                let parts = old.isEmpty ? [s] : splitBytes(s, old, limit: a.count > 2 ? try integer(a[2]) : -1)
                return .string(parts.joined(separator: new))
            }
        case "find":
            return fn(name) { a, _ in
                let needle = Array(try string(a.first ?? .undefined, name).utf8), hay = Array(s.utf8)
                guard let r = hay.firstRange(of: needle) else { return .int(-1) }
                return .int(String(decoding: hay[..<r.lowerBound], as: UTF8.self).unicodeScalars.count)
            }
        case "count":
            return fn(name) { a, _ in .int(splitBytes(s, try string(a.first ?? .undefined, name), limit: -1).count - 1) }
        case "join":
            return fn(name) { a, _ in .string(try iterate(a.first ?? .undefined).map(\.rendered).joined(separator: s)) }
        case "isdigit": return fn(name) { _, _ in .bool(!s.isEmpty && s.unicodeScalars.allSatisfy { $0.properties.numericType == .decimal }) }
        case "isspace": return fn(name) { _, _ in .bool(!s.isEmpty && s.unicodeScalars.allSatisfy { $0.properties.isWhitespace }) }
        default: return nil
        }
    }

    /// Splits on exact bytes: Swift's Character-based splitting would not find a separator
    /// followed by a combining mark.
    static func splitBytes(_ s: String, _ sep: String, limit: Int) -> [String] {
        let b = Array(s.utf8), p = Array(sep.utf8)
        var parts: [String] = [], start = 0, i = 0
        while i + p.count <= b.count, limit < 0 || parts.count < limit {
            if b[i..<(i + p.count)].elementsEqual(p) {
                parts.append(String(decoding: b[start..<i], as: UTF8.self))
                i += p.count
                start = i
            } else {
                i += 1
            }
        }
        parts.append(String(decoding: b[start...], as: UTF8.self))
        return parts
    }

    static func titleCase(_ s: String) -> String {
        var out = "", previousIsLetter = false
        for c in s {
            out += previousIsLetter ? c.lowercased() : c.uppercased()
            previousIsLetter = c.isLetter
        }
        return out
    }

    static func dictMethod(_ o: JinjaObject, _ name: String) -> JinjaValue? {
        switch name {
        case "items": return fn(name) { _, _ in .array(zip(o.keys, o.values).map { .array([.string($0), $1]) }) }
        case "keys": return fn(name) { _, _ in .array(o.keys.map { .string($0) }) }
        case "values": return fn(name) { _, _ in .array(o.values) }
        case "get":
            return fn(name) { a, _ in
                guard case .string(let k)? = a.first else { throw TemplateError("get() takes a string key") }
                return o[k] ?? (a.count > 1 ? a[1] : .none)
            }
        default: return nil
        }
    }

    static func listMethod(_ a: [JinjaValue], _ name: String) -> JinjaValue? {
        switch name {
        case "index":
            return fn(name) { args, _ in
                guard let x = args.first, let i = a.firstIndex(of: x) else { throw TemplateError("value not in list") }
                return .int(i)
            }
        case "count": return fn(name) { args, _ in .int(a.filter { $0 == (args.first ?? .undefined) }.count) }
        default: return nil
        }
    }
}
