// The library's public types mention kernel and tokenizer types (ElementType, Tokenizer), so
// users of D2MoE get those modules with it.
@_exported import D2MoEKernels
@_exported import D2MoETokenizers
