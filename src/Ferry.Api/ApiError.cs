namespace Ferry.Api;

/// <summary>The body of every error response: <c>{ "error": "the VM is already paused" }</c>, one line for a person.</summary>
public sealed record ApiError(string Error);
