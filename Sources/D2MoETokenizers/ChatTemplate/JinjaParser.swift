/// Expressions of the template language.
indirect enum JinjaExpr: Sendable {
    case literal(JinjaValue)
    case name(String)
    case list([JinjaExpr])
    case dict([(JinjaExpr, JinjaExpr)])
    case attribute(JinjaExpr, String)
    case item(JinjaExpr, JinjaExpr)
    case slice(JinjaExpr, JinjaExpr?, JinjaExpr?, JinjaExpr?)
    case call(JinjaExpr, [JinjaExpr], [(String, JinjaExpr)])
    case filter(JinjaExpr, String, [JinjaExpr], [(String, JinjaExpr)])
    case test(JinjaExpr, String, [JinjaExpr], negated: Bool)
    case unary(String, JinjaExpr)
    case binary(String, JinjaExpr, JinjaExpr)
    case conditional(JinjaExpr, condition: JinjaExpr, otherwise: JinjaExpr?)
}

/// Statements; `line` is kept for run-time errors.
indirect enum JinjaNode: Sendable {
    case text(String)
    case output(JinjaExpr, line: Int)
    case ifChain([(JinjaExpr, [JinjaNode])], otherwise: [JinjaNode], line: Int)
    case forLoop(targets: [String], iterable: JinjaExpr, filter: JinjaExpr?, body: [JinjaNode], otherwise: [JinjaNode], line: Int)
    case set(targets: [JinjaExpr], value: JinjaExpr, line: Int)
    case setBlock(name: String, body: [JinjaNode])
    case macro(name: String, parameters: [(String, JinjaExpr?)], body: [JinjaNode])
    case breakLoop, continueLoop
}

/// Recursive-descent parser over the segments, with Jinja's operator precedence
/// (conditional < or < and < not < comparisons < + - < ~ < * / // % < ** < unary < filters/tests < postfix).
struct JinjaParser {
    private var segments: [JinjaSegment]
    private var index = 0
    /// Blocks open at this point, innermost last, for "never closed" errors.
    private var openers: [(keyword: String, line: Int)] = []

    init(_ segments: [JinjaSegment]) { self.segments = segments }

    static func parse(_ source: String) throws -> [JinjaNode] {
        var parser = JinjaParser(try JinjaSplitter.split(source))
        let (nodes, end) = try parser.parseBlock(until: [])
        if let end { throw TemplateError("unexpected '{% \(end.keyword) %}'", line: end.line) }
        return nodes
    }

    /// Parses nodes until a statement whose keyword is in `enders`; returns it (nil at the end).
    private mutating func parseBlock(until enders: Set<String>) throws -> ([JinjaNode], (keyword: String, tokens: ExprParser, line: Int)?) {
        var nodes: [JinjaNode] = []
        while index < segments.count {
            let segment = segments[index]
            index += 1
            switch segment {
            case .text(let t):
                nodes.append(.text(t))
            case .output(let source, let line):
                var p = try ExprParser(source, line: line)
                let e = try p.parseExpression()
                try p.expectEnd()
                nodes.append(.output(e, line: line))
            case .statement(let source, let line):
                var p = try ExprParser(source, line: line)
                guard case .name(let keyword)? = p.next() else { throw TemplateError("empty or malformed '{% %}' tag", line: line) }
                if enders.contains(keyword) { return (nodes, (keyword, p, line)) }
                openers.append((keyword, line))
                nodes.append(try parseStatement(keyword, &p, line: line, enders: enders))
                openers.removeLast()
            }
        }
        if !enders.isEmpty {
            let wanted = enders.filter { $0.hasPrefix("end") }.sorted().joined(separator: " or ")
            let opener = openers.last.map { "'{% \($0.keyword) %}' on line \($0.line) is never closed: " } ?? ""
            throw TemplateError(opener + "the template ends before '{% \(wanted) %}'")
        }
        return (nodes, nil)
    }

    private mutating func parseStatement(_ keyword: String, _ p: inout ExprParser, line: Int, enders: Set<String>) throws -> JinjaNode {
        switch keyword {
        case "if":
            var branches: [(JinjaExpr, [JinjaNode])] = []
            var condition = try p.parseExpression()
            try p.expectEnd()
            while true {
                let (body, end) = try parseBlock(until: ["elif", "else", "endif"])
                branches.append((condition, body))
                guard var e = end else { throw TemplateError("'{% if %}' is never closed", line: line) }
                switch e.keyword {
                case "elif":
                    condition = try e.tokens.parseExpression()
                    try e.tokens.expectEnd()
                case "else":
                    try e.tokens.expectEnd()
                    let (otherwise, _) = try parseBlock(until: ["endif"])
                    return .ifChain(branches, otherwise: otherwise, line: line)
                default:
                    return .ifChain(branches, otherwise: [], line: line)
                }
            }
        case "for":
            var targets: [String] = []
            repeat {
                guard case .name(let n)? = p.next() else { throw TemplateError("expected a loop variable name after 'for'", line: line) }
                targets.append(n)
            } while p.accept(.op(","))
            guard p.accept(.name("in")) else { throw TemplateError("expected 'in' in for loop", line: line) }
            let iterable = try p.parseExpression(allowConditional: false)
            var filter: JinjaExpr? = nil
            if p.accept(.name("if")) { filter = try p.parseExpression(allowConditional: false) }
            _ = p.accept(.name("recursive"))
            try p.expectEnd()
            let (body, end) = try parseBlock(until: ["else", "endfor"])
            var otherwise: [JinjaNode] = []
            if end?.keyword == "else" { (otherwise, _) = try parseBlock(until: ["endfor"]) }
            return .forLoop(targets: targets, iterable: iterable, filter: filter, body: body, otherwise: otherwise, line: line)
        case "set":
            var targets: [JinjaExpr] = []
            repeat { targets.append(try p.parsePrimaryWithPostfix()) } while p.accept(.op(","))
            if p.atEnd {
                guard targets.count == 1, case .name(let name) = targets[0] else { throw TemplateError("block set needs one plain name", line: line) }
                let (body, _) = try parseBlock(until: ["endset"])
                return .setBlock(name: name, body: body)
            }
            guard p.accept(.op("=")) else { throw TemplateError("expected '=' in set", line: line) }
            var values = [try p.parseExpression()]
            while p.accept(.op(",")) { values.append(try p.parseExpression()) }
            try p.expectEnd()
            return .set(targets: targets, value: values.count == 1 ? values[0] : .list(values), line: line)
        case "macro":
            guard case .name(let name)? = p.next(), p.accept(.op("(")) else { throw TemplateError("expected 'macro name(...)'", line: line) }
            var parameters: [(String, JinjaExpr?)] = []
            while !p.accept(.op(")")) {
                guard case .name(let param)? = p.next() else { throw TemplateError("expected a macro parameter name", line: line) }
                parameters.append((param, p.accept(.op("=")) ? try p.parseExpression() : nil))
                _ = p.accept(.op(","))
            }
            try p.expectEnd()
            let (body, _) = try parseBlock(until: ["endmacro"])
            return .macro(name: name, parameters: parameters, body: body)
        case "generation":
            // Hugging Face's marker for assistant-token masks; transparent when rendering.
            let (body, _) = try parseBlock(until: ["endgeneration"])
            return .ifChain([(.literal(.bool(true)), body)], otherwise: [], line: line)
        case "break": try p.expectEnd(); return .breakLoop
        case "continue": try p.expectEnd(); return .continueLoop
        case "else", "elif", "endif", "endfor", "endset", "endmacro", "endgeneration":
            throw TemplateError("unexpected '{% \(keyword) %}' with no matching open block", line: line)
        default:
            throw TemplateError("'{% \(keyword) %}' is not supported by this template engine (supported: if, elif, else, for, set, macro, break, continue, generation)", line: line)
        }
    }
}

/// Parses one expression from a tag's tokens.
struct ExprParser {
    private let tokens: [JinjaToken]
    private var position = 0
    let line: Int

    init(_ source: String, line: Int) throws {
        tokens = try JinjaTokenizer.tokenize(source, line: line)
        self.line = line
    }

    var atEnd: Bool { position >= tokens.count }
    mutating func next() -> JinjaToken? { defer { position += 1 }; return position < tokens.count ? tokens[position] : nil }
    func peek(_ offset: Int = 0) -> JinjaToken? { position + offset < tokens.count ? tokens[position + offset] : nil }
    mutating func accept(_ t: JinjaToken) -> Bool { if peek() == t { position += 1; return true }; return false }
    func error(_ message: String) -> TemplateError { TemplateError(message, line: line) }

    func expectEnd() throws {
        if let t = peek() { throw error("unexpected \(Self.describe(t)) in tag") }
    }

    mutating func expect(_ t: JinjaToken) throws {
        guard accept(t) else { throw error("expected \(Self.describe(t)), found \(peek().map(Self.describe) ?? "end of tag")") }
    }

    static func describe(_ t: JinjaToken) -> String {
        switch t {
        case .name(let n): return "'\(n)'"
        case .string(let s): return "string '\(s)'"
        case .int(let i): return "number \(i)"
        case .double(let d): return "number \(d)"
        case .op(let o): return "'\(o)'"
        }
    }

    mutating func parseExpression(allowConditional: Bool = true) throws -> JinjaExpr {
        let value = try parseOr()
        guard allowConditional, accept(.name("if")) else { return value }
        let condition = try parseOr()
        let otherwise = accept(.name("else")) ? try parseExpression() : nil
        return .conditional(value, condition: condition, otherwise: otherwise)
    }

    private mutating func parseOr() throws -> JinjaExpr {
        var left = try parseAnd()
        while accept(.name("or")) { left = .binary("or", left, try parseAnd()) }
        return left
    }

    private mutating func parseAnd() throws -> JinjaExpr {
        var left = try parseNot()
        while accept(.name("and")) { left = .binary("and", left, try parseNot()) }
        return left
    }

    private mutating func parseNot() throws -> JinjaExpr {
        if accept(.name("not")) { return .unary("not", try parseNot()) }
        return try parseComparison()
    }

    private mutating func parseComparison() throws -> JinjaExpr {
        var left = try parseAdditive()
        while true {
            if case .op(let o)? = peek(), ["==", "!=", "<", ">", "<=", ">="].contains(o) {
                position += 1
                left = .binary(o, left, try parseAdditive())
            } else if accept(.name("in")) {
                left = .binary("in", left, try parseAdditive())
            } else if peek() == .name("not") && peek(1) == .name("in") {
                position += 2
                left = .unary("not", .binary("in", left, try parseAdditive()))
            } else {
                return left
            }
        }
    }

    private mutating func parseAdditive() throws -> JinjaExpr {
        var left = try parseConcat()
        while case .op(let o)? = peek(), o == "+" || o == "-" {
            position += 1
            left = .binary(o, left, try parseConcat())
        }
        return left
    }

    private mutating func parseConcat() throws -> JinjaExpr {
        var left = try parseMultiplicative()
        while accept(.op("~")) { left = .binary("~", left, try parseMultiplicative()) }
        return left
    }

    private mutating func parseMultiplicative() throws -> JinjaExpr {
        var left = try parsePower()
        while case .op(let o)? = peek(), ["*", "/", "//", "%"].contains(o) {
            position += 1
            left = .binary(o, left, try parsePower())
        }
        return left
    }

    private mutating func parsePower() throws -> JinjaExpr {
        var left = try parseUnary()
        while accept(.op("**")) { left = .binary("**", left, try parseUnary()) }
        return left
    }

    private mutating func parseUnary() throws -> JinjaExpr {
        if accept(.op("-")) { return try parseFilters(.unary("-", try parseUnary())) }
        if accept(.op("+")) { return try parseUnary() }
        return try parseFilters(try parsePrimaryWithPostfix())
    }

    /// `| filter(args)` and `is [not] test(args)` chains.
    private mutating func parseFilters(_ base: JinjaExpr) throws -> JinjaExpr {
        var e = base
        while true {
            if accept(.op("|")) {
                guard case .name(let name)? = next() else { throw error("expected a filter name after '|'") }
                var args: [JinjaExpr] = [], kwargs: [(String, JinjaExpr)] = []
                if accept(.op("(")) { (args, kwargs) = try parseArguments() }
                e = .filter(e, name, args, kwargs)
            } else if accept(.name("is")) {
                let negated = accept(.name("not"))
                guard case .name(let name)? = next() else { throw error("expected a test name after 'is'") }
                var args: [JinjaExpr] = []
                if accept(.op("(")) {
                    args = try parseArguments().0
                } else if let t = peek(), Self.startsArgument(t) {
                    args = [try parsePrimaryWithPostfix()]
                }
                e = .test(e, name, args, negated: negated)
            } else {
                return e
            }
        }
    }

    private static func startsArgument(_ t: JinjaToken) -> Bool {
        switch t {
        case .string, .int, .double: return true
        case .name(let n): return !["and", "or", "if", "else", "not", "in", "is"].contains(n)
        default: return false
        }
    }

    mutating func parsePrimaryWithPostfix() throws -> JinjaExpr {
        var e = try parsePrimary()
        while true {
            if accept(.op(".")) {
                guard let t = next() else { throw error("expected an attribute name after '.'") }
                switch t {
                case .name(let n): e = .attribute(e, n)
                case .int(let i): e = .item(e, .literal(.int(i)))
                default: throw error("expected an attribute name after '.'")
                }
            } else if accept(.op("[")) {
                e = try parseSubscript(e)
            } else if accept(.op("(")) {
                let (args, kwargs) = try parseArguments()
                e = .call(e, args, kwargs)
            } else {
                return e
            }
        }
    }

    private mutating func parseSubscript(_ base: JinjaExpr) throws -> JinjaExpr {
        var parts: [JinjaExpr?] = []
        var current: JinjaExpr? = nil
        var isSlice = false
        while !accept(.op("]")) {
            if accept(.op(":")) {
                isSlice = true
                parts.append(current)
                current = nil
            } else {
                guard current == nil else { throw error("expected ']'") }
                current = try parseExpression()
            }
            if atEnd { throw error("expected ']'") }
        }
        guard isSlice else {
            guard let index = current else { throw error("empty subscript") }
            return .item(base, index)
        }
        parts.append(current)
        guard parts.count <= 3 else { throw error("a slice has at most three parts") }
        while parts.count < 3 { parts.append(nil) }
        return .slice(base, parts[0], parts[1], parts[2])
    }

    private mutating func parseArguments() throws -> ([JinjaExpr], [(String, JinjaExpr)]) {
        var args: [JinjaExpr] = [], kwargs: [(String, JinjaExpr)] = []
        while !accept(.op(")")) {
            if case .name(let n)? = peek(), peek(1) == .op("=") {
                position += 2
                kwargs.append((n, try parseExpression()))
            } else {
                args.append(try parseExpression())
            }
            if !accept(.op(",")) {
                try expect(.op(")"))
                break
            }
        }
        return (args, kwargs)
    }

    private mutating func parsePrimary() throws -> JinjaExpr {
        guard let t = next() else { throw error("expression expected, found end of tag") }
        switch t {
        case .string(var s):
            while case .string(let more)? = peek() { s += more; position += 1 }  // adjacent literals concatenate
            return .literal(.string(s))
        case .int(let i): return .literal(.int(i))
        case .double(let d): return .literal(.double(d))
        case .name(let n):
            switch n {
            case "true", "True": return .literal(.bool(true))
            case "false", "False": return .literal(.bool(false))
            case "none", "None": return .literal(.none)
            default: return .name(n)
            }
        case .op("("):
            if accept(.op(")")) { return .list([]) }
            let first = try parseExpression()
            if accept(.op(")")) { return first }
            var items = [first]
            while accept(.op(",")) {
                if peek() == .op(")") { break }
                items.append(try parseExpression())
            }
            try expect(.op(")"))
            return .list(items)
        case .op("["):
            var items: [JinjaExpr] = []
            while !accept(.op("]")) {
                items.append(try parseExpression())
                if !accept(.op(",")) { try expect(.op("]")); break }
            }
            return .list(items)
        case .op("{"):
            var pairs: [(JinjaExpr, JinjaExpr)] = []
            while !accept(.op("}")) {
                let key = try parseExpression()
                try expect(.op(":"))
                pairs.append((key, try parseExpression()))
                if !accept(.op(",")) { try expect(.op("}")); break }
            }
            return .dict(pairs)
        default:
            throw error("unexpected \(Self.describe(t))")
        }
    }
}
