namespace Ferry.Migration.Transport;

/// <summary>
/// The channels of one migration: a control channel (handshake, state, switchover, and the return path from the
/// destination) and N page channels for bulk pages (default 2, as QEMU's multifd). A page always travels on the
/// same page channel (see the protocol), so per-page ordering needs no cross-channel sync.
/// </summary>
public sealed class MigrationConnection : IDisposable
{
    public MigrationConnection(IMigrationChannel control, IReadOnlyList<IMigrationChannel> pages, IMigrationChannel? urgent = null)
    {
        ArgumentNullException.ThrowIfNull(control);
        ArgumentNullException.ThrowIfNull(pages);
        if (pages.Count == 0) throw new ArgumentException("a connection needs at least one page channel", nameof(pages));
        Control = control;
        Pages = pages;
        Urgent = urgent;
    }

    /// <summary>Handshake, state sections, switchover; read in both directions.</summary>
    public IMigrationChannel Control { get; }

    /// <summary>Bulk page channels.</summary>
    public IReadOnlyList<IMigrationChannel> Pages { get; }

    /// <summary>
    /// Post-copy's urgent channel (source to destination): pages the destination faulted on, so they never wait behind
    /// bulk pages in a page channel's socket buffer. Null unless asked for at connect time.
    /// </summary>
    public IMigrationChannel? Urgent { get; }

    /// <summary>Abort every channel: unblocks all threads using this connection.</summary>
    public void Abort()
    {
        Control.Abort();
        foreach (var p in Pages) p.Abort();
        Urgent?.Abort();
    }

    public void Dispose()
    {
        Control.Dispose();
        foreach (var p in Pages) p.Dispose();
        Urgent?.Dispose();
    }
}

/// <summary>Opens the source side of a migration connection.</summary>
public interface IMigrationConnector
{
    /// <summary>Open the control channel and <paramref name="pageChannels"/> page channels to the destination.</summary>
    MigrationConnection Connect(int pageChannels, CancellationToken cancellationToken);

    /// <summary>
    /// As <see cref="Connect(int, CancellationToken)"/>, plus post-copy's urgent channel when
    /// <paramref name="urgentChannel"/> is set. A transport that cannot open one throws <see cref="NotSupportedException"/>.
    /// </summary>
    MigrationConnection Connect(int pageChannels, bool urgentChannel, CancellationToken cancellationToken) =>
        urgentChannel
            ? throw new NotSupportedException($"{GetType().Name} cannot open an urgent channel (post-copy)")
            : Connect(pageChannels, cancellationToken);
}

/// <summary>Accepts the destination side of migration connections.</summary>
public interface IMigrationListener : IDisposable
{
    /// <summary>Wait for a source and return its control and page channels, grouped.</summary>
    MigrationConnection Accept(CancellationToken cancellationToken);
}
