namespace Ferry.Migration.Protocol;

/// <summary>The peer's stream broke the protocol: unknown record, bad length, bad checksum, refused version, ...</summary>
public sealed class MigrationProtocolException : MigrationException
{
    public MigrationProtocolException(string message) : base(message) { }
    public MigrationProtocolException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>The peer ended the migration on purpose: it sent Refuse, Cancel or Error.</summary>
public sealed class MigrationPeerException : MigrationException
{
    public MigrationPeerException(RecordKind kind, ProtocolErrorCode code, string peerMessage)
        : base($"peer sent {kind}{(kind == RecordKind.Error ? $" ({code})" : "")}: {peerMessage}")
    {
        Kind = kind;
        Code = code;
        PeerMessage = peerMessage;
    }

    /// <summary>Refuse, Cancel or Error.</summary>
    public RecordKind Kind { get; }

    /// <summary>The Error record's code; <see cref="ProtocolErrorCode.None"/> for Refuse and Cancel.</summary>
    public ProtocolErrorCode Code { get; }

    /// <summary>The reason or message as the peer wrote it.</summary>
    public string PeerMessage { get; }
}
