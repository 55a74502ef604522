namespace Ferry.Migration.Tests.Precopy;

/// <summary>
/// Whole migrations run one at a time: each uses several threads, and on a 2-core box running them side by side
/// would make the timing-based promises (peer timeouts, convergence) depend on the scheduler; the allocation test
/// also needs the process to itself.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class MigrationCollection
{
    public const string Name = "whole migrations";
}
