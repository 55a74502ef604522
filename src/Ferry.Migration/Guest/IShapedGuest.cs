namespace Ferry.Migration.Guest;

/// <summary>
/// A source guest whose destination needs its shape before its state: what the destination must build before the
/// switchover to load the state without building anything then (for Ferry's machine, its hart count: a board with
/// another number of harts is rebuilt inside the downtime, ~4 ms here). With capability
/// <see cref="Protocol.ProtocolCapabilities.Shape"/> the engine sends <see cref="GetShape"/> right after the handshake
/// (QEMU's "configuration" section plays this part, though QEMU only checks it: its destination is built from its
/// own command line, which must match).
/// </summary>
public interface IShapedMigrationSource
{
    /// <summary>The guest's shape, as one section only a <see cref="IShapedMigrationTarget"/> of its kind reads. Called once, on the migration thread, before anything is sent.</summary>
    StateSection GetShape();
}

/// <summary>A destination guest that builds itself ahead in the source's shape (<see cref="IShapedMigrationSource"/>).</summary>
public interface IShapedMigrationTarget
{
    /// <summary>
    /// Take the source's shape, right after the target was created and before any page or state arrives; build in it
    /// now, if that is not already the shape. The section comes from the network: anything this target cannot take
    /// is an <see cref="InvalidDataException"/> saying what, which fails the migration before anything moved.
    /// </summary>
    void Reshape(StateSection shape);
}
