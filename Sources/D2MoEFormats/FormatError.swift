/// A model or data file that cannot be read: the message names the file and the problem.
public struct FormatError: Error, CustomStringConvertible, Sendable {
    /// The file.
    public let path: String
    /// What is wrong with it.
    public let problem: String

    public init(_ path: String, _ problem: String) {
        self.path = path
        self.problem = problem
    }

    public var description: String { "\(path): \(problem)" }
}
