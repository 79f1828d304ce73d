/// A template or render failure, naming the line of the template where it happened.
public struct TemplateError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public let line: Int?
    public var description: String { line.map { "chat template line \($0): \(message)" } ?? "chat template: \(message)" }
    public init(_ message: String, line: Int? = nil) {
        self.message = message
        self.line = line
    }
}

/// One piece of a template: literal text, `{{ … }}` or `{% … %}` (comments are dropped).
enum JinjaSegment {
    case text(String)
    case output(String, line: Int)
    case statement(String, line: Int)
}

/// Splits a template into segments and applies whitespace control the way Hugging Face
/// configures Jinja for chat templates: `trim_blocks` and `lstrip_blocks` on, plus `-`/`+` markers.
enum JinjaSplitter {
    static func split(_ source: String) throws -> [JinjaSegment] {
        let s = Array(source.unicodeScalars)
        var segments: [JinjaSegment] = []
        var text: [Unicode.Scalar] = []
        var i = 0, line = 1
        var trimNextNewline = false, stripNextWhitespace = false
        var textStart = 0  // source index of text[0]: text is always a contiguous run of the source
        func flushText() {
            if !text.isEmpty { segments.append(.text(String(String.UnicodeScalarView(text)))) }
            text = []
        }
        while i < s.count {
            let c = s[i]
            if c == "{", i + 1 < s.count, s[i + 1] == "{" || s[i + 1] == "%" || s[i + 1] == "#" {
                let kind = s[i + 1]
                let close: Unicode.Scalar = kind == "{" ? "}" : kind == "%" ? "%" : "#"
                let tagLine = line
                var j = i + 2
                let minus = j < s.count && s[j] == "-", plus = j < s.count && s[j] == "+"
                if minus || plus { j += 1 }
                // Find the closing marker, skipping over string literals in expressions.
                var bodyStart = j, end = -1, quote: Unicode.Scalar? = nil
                while j + 1 < s.count {
                    let x = s[j]
                    if x == "\n" { line += 1 }
                    if let q = quote {
                        if x == "\\" { j += 2; continue }
                        if x == q { quote = nil }
                    } else if kind != "#" && (x == "'" || x == "\"") {
                        quote = x
                    } else if x == close && s[j + 1] == "}" {
                        end = j
                        break
                    }
                    j += 1
                }
                guard end >= 0 else {
                    throw TemplateError("'\(String(c))\(String(kind))' is never closed", line: tagLine)
                }
                var bodyEnd = end
                let closeMinus = bodyEnd > bodyStart && s[bodyEnd - 1] == "-"
                if closeMinus { bodyEnd -= 1 }
                if bodyStart > bodyEnd { bodyStart = bodyEnd }
                let isBlock = kind != "{"
                // Whitespace before the tag.
                if minus {
                    while let last = text.last, last.properties.isWhitespace { text.removeLast() }
                } else if isBlock && !plus {
                    if text.isEmpty { textStart = i }
                    var k = text.count
                    while k > 0, text[k - 1] == " " || text[k - 1] == "\t" { k -= 1 }
                    // Jinja asks the source, not the output: a newline eaten by trim_blocks still starts a line.
                    let p = textStart + k
                    if p == 0 || s[p - 1] == "\n" { text.removeSubrange(k...) }
                }
                flushText()
                let body = String(String.UnicodeScalarView(s[bodyStart..<bodyEnd])).trimmingWhitespace()
                switch kind {
                case "{": segments.append(.output(body, line: tagLine))
                case "%": segments.append(.statement(body, line: tagLine))
                default: break
                }
                i = end + 2
                stripNextWhitespace = closeMinus
                trimNextNewline = isBlock && !closeMinus
                continue
            }
            if stripNextWhitespace {
                if c.properties.isWhitespace { if c == "\n" { line += 1 }; i += 1; continue }
                stripNextWhitespace = false
            }
            if trimNextNewline {
                trimNextNewline = false
                if c == "\n" { line += 1; i += 1; continue }
                if c == "\r", i + 1 < s.count, s[i + 1] == "\n" { line += 1; i += 2; continue }
            }
            if c == "\n" { line += 1 }
            if text.isEmpty { textStart = i }
            text.append(c)
            i += 1
        }
        flushText()
        return segments
    }
}

/// Tokens of the expression language inside tags.
enum JinjaToken: Equatable {
    case name(String)
    case string(String)
    case int(Int)
    case double(Double)
    case op(String)
}

enum JinjaTokenizer {
    static let operators = ["//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">", "=",
                            "(", ")", "[", "]", "{", "}", ",", ".", ":", "|"]

    static func tokenize(_ source: String, line: Int) throws -> [JinjaToken] {
        let s = Array(source.unicodeScalars)
        var out: [JinjaToken] = []
        var i = 0
        while i < s.count {
            let c = s[i]
            if c.properties.isWhitespace { i += 1; continue }
            if c == "'" || c == "\"" {
                var value = String.UnicodeScalarView()
                var j = i + 1
                while j < s.count && s[j] != c {
                    if s[j] == "\\" && j + 1 < s.count {
                        j += 1
                        switch s[j] {
                        case "n": value.append("\n")
                        case "t": value.append("\t")
                        case "r": value.append("\r")
                        case "\\": value.append("\\")
                        case "'": value.append("'")
                        case "\"": value.append("\"")
                        case "u" where j + 4 < s.count:
                            let hex = String(String.UnicodeScalarView(s[(j + 1)...(j + 4)]))
                            if let v = UInt32(hex, radix: 16), let u = Unicode.Scalar(v) { value.append(u); j += 4 } else { value.append("\\"); value.append("u") }
                        default: value.append("\\"); value.append(s[j])
                        }
                    } else {
                        value.append(s[j])
                    }
                    j += 1
                }
                guard j < s.count else { throw TemplateError("unterminated string literal", line: line) }
                out.append(.string(String(value)))
                i = j + 1
                continue
            }
            if c.properties.numericType != nil && c.isASCII {
                var j = i
                while j < s.count && s[j].isASCII && s[j].properties.numericType != nil { j += 1 }
                if j + 1 < s.count && s[j] == "." && s[j + 1].isASCII && s[j + 1].properties.numericType != nil {
                    j += 1
                    while j < s.count && s[j].isASCII && s[j].properties.numericType != nil { j += 1 }
                    out.append(.double(Double(String(String.UnicodeScalarView(s[i..<j])))!))
                } else {
                    guard let v = Int(String(String.UnicodeScalarView(s[i..<j]))) else { throw TemplateError("number too large", line: line) }
                    out.append(.int(v))
                }
                i = j
                continue
            }
            if c == "_" || c.properties.isAlphabetic {
                var j = i
                while j < s.count && (s[j] == "_" || s[j].properties.isAlphabetic || (s[j].isASCII && s[j].properties.numericType != nil)) { j += 1 }
                out.append(.name(String(String.UnicodeScalarView(s[i..<j]))))
                i = j
                continue
            }
            let rest = String(String.UnicodeScalarView(s[i..<min(i + 2, s.count)]))
            guard let op = operators.first(where: { rest.hasPrefix($0) }) else {
                throw TemplateError("unexpected character '\(c)'", line: line)
            }
            out.append(.op(op))
            i += op.unicodeScalars.count
        }
        return out
    }
}

extension String {
    func trimmingWhitespace() -> String {
        let scalars = unicodeScalars
        guard let first = scalars.firstIndex(where: { !$0.properties.isWhitespace }) else { return "" }
        let last = scalars.lastIndex(where: { !$0.properties.isWhitespace })!
        return String(scalars[first...last])
    }
}
