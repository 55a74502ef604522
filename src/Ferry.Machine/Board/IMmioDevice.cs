namespace Ferry.Machine.Board;

/// <summary>
/// A device register window on the board's address space (<see cref="AddressSpace"/>). Harts call it from their own
/// threads, several at once: a device guards its own state. Accesses are naturally sized (1, 2, 4 or 8 bytes) and
/// never cross the window's end; the address space checks both before it calls.
/// </summary>
public interface IMmioDevice
{
    /// <summary>Read <paramref name="size"/> bytes at <paramref name="offset"/> from the window's base, zero-extended.</summary>
    ulong Read(ulong offset, int size);

    /// <summary>Write the low <paramref name="size"/> bytes of <paramref name="value"/> at <paramref name="offset"/>.</summary>
    void Write(ulong offset, int size, ulong value);
}
