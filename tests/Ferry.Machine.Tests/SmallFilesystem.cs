namespace Ferry.Machine.Tests;

/// <summary>
/// A file system a test mounts for itself, to meet a full disk for real: a size-limited tmpfs (writes beyond its size
/// fail at once, ENOSPC), or an ext4 whose block device (a loop device over a file on such a tmpfs) is smaller than
/// the file system believes: writes succeed into the page cache and fail on their way to the device, so the error
/// surfaces only at write-back (<c>fdatasync</c>), reported once per open file, as a failing disk's would.
/// <see cref="Dispose"/> unmounts and detaches all of it, also after a failed test.
/// </summary>
/// <remarks>Needs root (mount, losetup) and e2fsprogs' mkfs.ext4: without them <see cref="Tmpfs"/> and
/// <see cref="Ext4OnFullDevice"/> throw, saying which, so such a test fails rather than skipping unseen.</remarks>
internal sealed class SmallFilesystem : IDisposable
{
    private const string Missing = "this test mounts a small file system (util-linux, e2fsprogs)";
    private readonly string dir;
    private readonly string? loop;
    private readonly bool backingMounted;
    private bool mounted;

    private SmallFilesystem(string dir, string path, string? loop, bool backingMounted)
    {
        this.dir = dir;
        Path = path;
        this.loop = loop;
        this.backingMounted = backingMounted;
        mounted = true;
    }

    /// <summary>The mounted file system's root.</summary>
    public string Path { get; }

    /// <summary>A tmpfs of <paramref name="bytes"/>.</summary>
    public static SmallFilesystem Tmpfs(long bytes)
    {
        RequireRoot();
        string dir = Directory.CreateTempSubdirectory("ferry-fs-").FullName;
        try
        {
            HostCommand.Run("mount", $"-t tmpfs -o size={bytes} ferry-test {dir}", Missing);
        }
        catch
        {
            Directory.Delete(dir);
            throw;
        }
        return new SmallFilesystem(dir, dir, loop: null, backingMounted: false);
    }

    /// <summary>
    /// An ext4 of <paramref name="apparentBytes"/> on a device that can hold only <paramref name="deviceBytes"/> of
    /// them (its metadata included): the file system grants room it cannot write.
    /// </summary>
    public static SmallFilesystem Ext4OnFullDevice(long apparentBytes, long deviceBytes)
    {
        RequireRoot();
        string dir = Directory.CreateTempSubdirectory("ferry-fs-").FullName;
        string backing = System.IO.Path.Combine(dir, "device");
        string mountPoint = System.IO.Path.Combine(dir, "ext4");
        string? loop = null;
        bool backingMounted = false;
        try
        {
            HostCommand.Run("mount", $"-t tmpfs -o size={deviceBytes} ferry-test {dir}", Missing);
            backingMounted = true;
            using (var f = new FileStream(backing, FileMode.CreateNew)) f.SetLength(apparentBytes);
            loop = HostCommand.Run("losetup", $"--find --show {backing}", Missing).Trim();
            HostCommand.Run("mkfs.ext4", $"-q -F {loop}", Missing);
            Directory.CreateDirectory(mountPoint);
            HostCommand.Run("mount", $"{loop} {mountPoint}", Missing);
        }
        catch
        {
            if (loop is not null) TryRun("losetup", $"-d {loop}");
            if (backingMounted) TryRun("umount", dir);
            Directory.Delete(dir, recursive: true);
            throw;
        }
        return new SmallFilesystem(dir, mountPoint, loop, backingMounted);
    }

    public void Dispose()
    {
        if (!mounted) return;
        mounted = false;
        if (loop is not null)
        {
            // Lazily: a file a failed test left open must not keep the mount, or the loop device, for good.
            TryRun("umount", $"-l {Path}");
            TryRun("losetup", $"-d {loop}");
        }
        if (backingMounted || loop is null) TryRun("umount", $"-l {dir}");
        try
        {
            Directory.Delete(dir, recursive: true);
        }
        catch (IOException)
        {
            // Still mounted (an open file): the lazy unmount frees it when that closes.
        }
    }

    private static void RequireRoot()
    {
        if (Environment.UserName != "root") throw new InvalidOperationException($"{Missing}, which needs root; running as {Environment.UserName}");
    }

    private static void TryRun(string tool, string arguments)
    {
        try
        {
            HostCommand.Run(tool, arguments, Missing);
        }
        catch (InvalidOperationException)
        {
            // Cleaning up: what could be undone was.
        }
    }
}
