namespace Ferry.Migration.Guest;

/// <summary>
/// The source could not read one of its own regions through its <see cref="IRegionReader"/> (a copied disk image with
/// a bad sector, or truncated): the migration fails saying so, as the source's fault, not the link's or the peer's.
/// </summary>
internal sealed class RegionReadException(IOException inner) : IOException($"source: {inner.Message}", inner);
