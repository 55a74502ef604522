namespace Ferry.Migration;

/// <summary>A migration failed for a stated reason (bad stream, refused handshake, peer gone, ...).</summary>
public class MigrationException : Exception
{
    public MigrationException(string message) : base(message) { }
    public MigrationException(string message, Exception inner) : base(message, inner) { }
}
