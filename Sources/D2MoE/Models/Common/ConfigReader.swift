import Foundation

/// Typed access to a model configuration (config.json, or GGUF metadata translated to the same
/// keys), with errors that name the source and the field.
public struct ConfigReader: @unchecked Sendable {
    /// The parsed JSON object.
    public let values: [String: Any]
    /// Where it came from, for messages.
    public let origin: String

    public init(_ values: [String: Any], origin: String) {
        self.values = values
        self.origin = origin
    }

    public func has(_ key: String) -> Bool { values[key] != nil && !(values[key] is NSNull) }

    public func int(_ key: String) throws -> Int {
        guard let v = optionalInt(key) else { throw missing(key, "an integer") }
        return v
    }

    public func optionalInt(_ key: String) -> Int? {
        switch values[key] {
        case let v as Int: return v
        case let v as Double where v == v.rounded(): return Int(v)
        default: return nil
        }
    }

    public func double(_ key: String) throws -> Double {
        guard let v = optionalDouble(key) else { throw missing(key, "a number") }
        return v
    }

    public func optionalDouble(_ key: String) -> Double? {
        switch values[key] {
        case let v as Double: return v
        case let v as Int: return Double(v)
        default: return nil
        }
    }

    public func string(_ key: String) throws -> String {
        guard let v = values[key] as? String else { throw missing(key, "a string") }
        return v
    }

    public func bool(_ key: String, default value: Bool) -> Bool { (values[key] as? Bool) ?? value }

    public func intArray(_ key: String) -> [Int]? {
        (values[key] as? [Any])?.compactMap { ($0 as? Int) ?? ($0 as? Double).map { Int($0) } }
    }

    public func stringArray(_ key: String) -> [String]? { (values[key] as? [Any])?.compactMap { $0 as? String } }

    public func object(_ key: String) -> [String: Any]? { values[key] as? [String: Any] }

    private func missing(_ key: String, _ kind: String) -> ModelError {
        values[key] == nil
            ? ModelError("\(origin): missing field '\(key)'")
            : ModelError("\(origin): field '\(key)' must be \(kind), found \(String(describing: values[key]!))")
    }
}
