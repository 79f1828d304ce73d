import Foundation

/// Evaluates a parsed template. Scopes follow Jinja: a for loop's body (and a macro call) gets
/// its own scope, so `set` inside a loop is not seen after it — unless it sets a namespace.
final class JinjaInterpreter {
    private var scopes: [[String: JinjaValue]]
    private var output = ""

    init(globals: [String: JinjaValue]) {
        scopes = [JinjaBuiltins.globals.merging(globals) { $1 }]
    }

    private enum Flow { case normal, breakLoop, continueLoop }

    func render(_ nodes: [JinjaNode]) throws -> String {
        output = ""
        _ = try run(nodes)
        return output
    }

    private func lookup(_ name: String) -> JinjaValue {
        for scope in scopes.reversed() { if let v = scope[name] { return v } }
        return .undefined
    }

    private func assign(_ name: String, _ value: JinjaValue) { scopes[scopes.count - 1][name] = value }

    private func run(_ nodes: [JinjaNode]) throws -> Flow {
        for node in nodes {
            switch node {
            case .text(let t):
                output += t
            case .output(let e, let line):
                output += try at(line) { try eval(e).rendered }
            case .ifChain(let branches, let otherwise, let line):
                var taken = false
                for (condition, body) in branches where try at(line, { try eval(condition).isTruthy }) {
                    taken = true
                    let flow = try run(body)
                    if flow != .normal { return flow }
                    break
                }
                if !taken { let flow = try run(otherwise); if flow != .normal { return flow } }
            case .forLoop(let targets, let iterable, let filter, let body, let otherwise, let line):
                try runLoop(targets: targets, iterable: iterable, filter: filter, body: body, otherwise: otherwise, line: line)
            case .set(let targets, let valueExpr, let line):
                try at(line) {
                    let value = try eval(valueExpr)
                    if targets.count == 1 {
                        try store(targets[0], value)
                    } else {
                        let items = try JinjaBuiltins.iterate(value)
                        guard items.count == targets.count else {
                            throw TemplateError("cannot unpack \(items.count) values into \(targets.count) names")
                        }
                        for (t, v) in zip(targets, items) { try store(t, v) }
                    }
                }
            case .setBlock(let name, let body):
                let saved = output
                output = ""
                _ = try run(body)
                let captured = output
                output = saved
                assign(name, .string(captured))
            case .macro(let name, let parameters, let body):
                assign(name, makeMacro(name: name, parameters: parameters, body: body))
            case .breakLoop: return .breakLoop
            case .continueLoop: return .continueLoop
            }
        }
        return .normal
    }

    private func store(_ target: JinjaExpr, _ value: JinjaValue) throws {
        switch target {
        case .name(let n):
            assign(n, value)
        case .attribute(let base, let attribute):
            guard case .namespace(let ns) = try eval(base) else {
                throw TemplateError("only a namespace's attributes can be assigned ('set x.\(attribute) = …')")
            }
            ns.attributes[attribute] = value
        default:
            throw TemplateError("cannot assign to this expression")
        }
    }

    private func runLoop(targets: [String], iterable: JinjaExpr, filter: JinjaExpr?, body: [JinjaNode],
                         otherwise: [JinjaNode], line: Int) throws {
        var items = try at(line) { try JinjaBuiltins.iterate(try eval(iterable)) }
        scopes.append([:])
        defer { scopes.removeLast() }
        func bind(_ item: JinjaValue) throws {
            if targets.count == 1 {
                assign(targets[0], item)
            } else {
                let parts = try JinjaBuiltins.iterate(item)
                guard parts.count == targets.count else {
                    throw TemplateError("cannot unpack \(parts.count) values into \(targets.count) loop variables", line: line)
                }
                for (t, v) in zip(targets, parts) { assign(t, v) }
            }
        }
        if let filter {
            items = try items.filter { try bind($0); return try at(line) { try eval(filter).isTruthy } }
        }
        if items.isEmpty { _ = try run(otherwise); return }
        for (i, item) in items.enumerated() {
            try bind(item)
            let n = items.count
            let cycleItems = items
            _ = cycleItems
            var loop = JinjaObject([
                ("index", .int(i + 1)), ("index0", .int(i)), ("revindex", .int(n - i)), ("revindex0", .int(n - i - 1)),
                ("first", .bool(i == 0)), ("last", .bool(i == n - 1)), ("length", .int(n)),
                ("previtem", i > 0 ? items[i - 1] : .undefined), ("nextitem", i + 1 < n ? items[i + 1] : .undefined),
            ])
            loop["cycle"] = .function(JinjaFunction(name: "cycle") { args, _ in
                args.isEmpty ? .undefined : args[i % args.count]
            })
            assign("loop", .object(loop))
            if try run(body) == .breakLoop { break }
        }
    }

    private func makeMacro(name: String, parameters: [(String, JinjaExpr?)], body: [JinjaNode]) -> JinjaValue {
        // The closure is only called during this render, on this thread.
        nonisolated(unsafe) let interpreter = self
        return .function(JinjaFunction(name: name) { args, kwargs in
            var scope: [String: JinjaValue] = [:]
            for (k, (param, defaultValue)) in parameters.enumerated() {
                if k < args.count {
                    scope[param] = args[k]
                } else if let kw = kwargs.first(where: { $0.0 == param }) {
                    scope[param] = kw.1
                } else {
                    scope[param] = try defaultValue.map { try interpreter.eval($0) } ?? .undefined
                }
            }
            let saved = interpreter.output
            interpreter.output = ""
            interpreter.scopes.append(scope)
            defer { interpreter.scopes.removeLast() }
            _ = try interpreter.run(body)
            let result = interpreter.output
            interpreter.output = saved
            return .string(result)
        })
    }

    /// Attaches the tag's line to errors that do not have one yet.
    private func at<T>(_ line: Int, _ body: () throws -> T) throws -> T {
        do { return try body() } catch let e as TemplateError where e.line == nil {
            throw TemplateError(e.message, line: line)
        }
    }

    func eval(_ e: JinjaExpr) throws -> JinjaValue {
        switch e {
        case .literal(let v): return v
        case .name(let n): return lookup(n)
        case .list(let items): return .array(try items.map(eval))
        case .dict(let pairs):
            var o = JinjaObject()
            for (k, v) in pairs {
                guard case .string(let key) = try eval(k) else { throw TemplateError("dictionary keys must be strings") }
                o[key] = try eval(v)
            }
            return .object(o)
        case .attribute(let base, let name):
            return try JinjaBuiltins.attribute(try eval(base), name)
        case .item(let base, let index):
            return try JinjaBuiltins.item(try eval(base), try eval(index))
        case .slice(let base, let a, let b, let c):
            return try JinjaBuiltins.slice(try eval(base), try a.map(eval), try b.map(eval), try c.map(eval))
        case .call(let callee, let args, let kwargs):
            let f = try eval(callee)
            guard case .function(let fn) = f else {
                if case .undefined = f, case .name(let n) = callee { throw TemplateError("'\(n)' is undefined (not a function this engine provides)") }
                throw TemplateError("a \(f.typeName) is not callable")
            }
            return try fn.call(try args.map(eval), try kwargs.map { ($0.0, try eval($0.1)) })
        case .filter(let base, let name, let args, let kwargs):
            return try JinjaBuiltins.filter(name, try eval(base), try args.map(eval), try kwargs.map { ($0.0, try eval($0.1)) })
        case .test(let base, let name, let args, let negated):
            let value: JinjaValue
            if case .name(let n) = base, name == "defined" || name == "undefined" { value = lookup(n) } else { value = try eval(base) }
            let result = try JinjaBuiltins.test(name, value, try args.map(eval))
            return .bool(negated ? !result : result)
        case .unary(let op, let operand):
            let v = try eval(operand)
            if op == "not" { return .bool(!v.isTruthy) }
            switch v {
            case .int(let i): return .int(-i)
            case .double(let d): return .double(-d)
            default: throw TemplateError("cannot negate a \(v.typeName)")
            }
        case .binary("and", let a, let b):
            let l = try eval(a)
            return l.isTruthy ? try eval(b) : l
        case .binary("or", let a, let b):
            let l = try eval(a)
            return l.isTruthy ? l : try eval(b)
        case .binary(let op, let a, let b):
            return try JinjaBuiltins.binary(op, try eval(a), try eval(b))
        case .conditional(let value, let condition, let otherwise):
            if try eval(condition).isTruthy { return try eval(value) }
            return try otherwise.map(eval) ?? .undefined
        }
    }
}
