import Foundation
import Testing
import D2MoETokenizers

/// Real chat templates (SmolLM2, Gemma 3, Qwen2, Qwen3, Mixtral, OLMoE, Mistral-Nemo, Llama 3.1)
/// rendered by our Jinja subset against Jinja2 as transformers configures it
/// (scripts/reference/chat_template_golden.py).
struct ChatTemplateTests {
    static let directory = Bundle.module.resourceURL!.appendingPathComponent("Fixtures/chat-templates")

    struct Case: Decodable {
        let template: String
        let variables: [String: JinjaValue]
        let output: String?
        let error: Bool?
        let message: String?
    }

    static func cases() throws -> [Case] {
        try JSONDecoder().decode([Case].self, from: Data(contentsOf: directory.appendingPathComponent("golden.json")))
    }

    @Test func everyGoldenRenderingMatchesJinja2() throws {
        let cases = try Self.cases()
        #expect(cases.count >= 60)
        var templates: [String: ChatTemplate] = [:]
        for c in cases {
            let template = try templates[c.template] ?? ChatTemplate(String(contentsOf: Self.directory.appendingPathComponent(c.template), encoding: .utf8))
            templates[c.template] = template
            let variables = c.variables.merging(["raise_exception": .undefined]) { a, _ in a }.filter { $0.value != .undefined }
            if c.error == true {
                #expect(throws: TemplateError.self, "\(c.template) should raise: \(c.message ?? "")") { try template.render(variables: variables) }
                do { _ = try template.render(variables: variables) } catch let e as TemplateError {
                    #expect(e.message.contains(c.message ?? "\u{0}"), "\(c.template): \(e.message) vs \(c.message ?? "")")
                }
            } else {
                let out = try template.render(variables: variables)
                #expect(out == c.output, "\(c.template) \(c.variables["messages"].map { "\($0)".prefix(80) } ?? "")")
            }
        }
        #expect(Set(cases.map(\.template)).count >= 6)
    }

    @Test func messagesAPIRendersLikeTheVariablesForm() throws {
        let t = try ChatTemplate(String(contentsOf: Self.directory.appendingPathComponent("smollm2.jinja"), encoding: .utf8))
        let out = try t.render(messages: [ChatMessage(role: "user", content: "Hi")], addGenerationPrompt: true)
        #expect(out.hasSuffix("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"))
    }

    @Test(arguments: [
        ("{% if x %}unclosed", "never closed"),
        ("{{ x ", "never closed"),
        ("{% for %}{% endfor %}", "loop variable"),
        ("{% frobnicate %}", "not supported"),
        ("{{ x | nosuchfilter }}", "filter 'nosuchfilter'"),
        ("{% endif %}", "unexpected"),
        ("{{ 'abc }}", "never closed"),
        ("{{ (1 + }}", "expression expected"),
        ("line1\n{{ a.b.c }}", "line 2"),
    ])
    func malformedTemplatesGiveClearErrors(_ source: String, _ expected: String) {
        do {
            let t = try ChatTemplate(source)
            _ = try t.render(variables: [:])
            Issue.record("\(source.debugDescription) rendered without error")
        } catch let e as TemplateError {
            #expect(e.description.contains(expected), "\(e.description) should mention \(expected)")
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }

    @Test func jinjaSemantics() throws {
        func render(_ s: String, _ v: [String: JinjaValue] = [:]) throws -> String { try ChatTemplate(s).render(variables: v) }
        #expect(try render("{% for i in range(3) %}{{ loop.index }}{{ ',' if not loop.last }}{% endfor %}") == "1,2,3")
        #expect(try render("{% set ns = namespace(n=0) %}{% for i in [1,2,3] %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}") == "6")
        #expect(try render("{% set n = 0 %}{% for i in [1,2] %}{% set n = i %}{% endfor %}{{ n }}") == "0")
        #expect(try render("{{ '  a b  ' | trim }}|{{ [1,2] | length }}|{{ {'k': [1, 'x']} | tojson }}") == "a b|2|{\"k\": [1, \"x\"]}")
        #expect(try render("{{ 'a,b,c'.split(',')[-1] }}{{ 'xyz'[::-1] }}{{ 'Hi'.upper() }}{{ 'abc'.startswith('ab') }}") == "czyxHITrue")
        #expect(try render("{%- if x is defined -%} yes {%- else -%} no {%- endif -%}") == "no")
        #expect(try render("{% macro m(a, b='d') %}[{{ a }}{{ b }}]{% endmacro %}{{ m(1) }}{{ m(2, b='e') }}") == "[1d][2e]")
        #expect(try render("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", ["d": .object(JinjaObject([("a", .int(1)), ("b", .int(2))]))]) == "a=1;b=2;")
        #expect(try render("{{ 7 // 2 }} {{ 7 % 3 }} {{ 2 ** 3 }} {{ 1 / 2 }} {{ 'a' ~ 1 }}") == "3 1 8 0.5 a1")
        #expect(try render("  {% if true %}\n    x\n  {% endif %}\n") == "    x\n")
        #expect(try render("{% for x in [1,2,3,4] if x is even %}{{ x }}{% else %}none{% endfor %}") == "24")
        #expect(try render("{% for x in [1,2,3] %}{% if x == 2 %}{% break %}{% endif %}{{ x }}{% endfor %}") == "1")
    }
}
