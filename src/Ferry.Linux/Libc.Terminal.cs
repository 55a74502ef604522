using System.Runtime.InteropServices;

namespace Ferry.Linux;

public static partial class Libc
{
    [LibraryImport(LibraryName, EntryPoint = "isatty", SetLastError = true)]
    private static partial int isatty(int fd);

    [LibraryImport(LibraryName, EntryPoint = "tcgetpgrp", SetLastError = true)]
    private static partial int tcgetpgrp(int fd);

    [LibraryImport(LibraryName, EntryPoint = "getpgrp")]
    private static partial int getpgrp();

    /// <summary>
    /// <paramref name="fd"/> is a terminal whose foreground process group is not this process's (a job started with
    /// <c>&amp;</c> from an interactive shell). Reading it would stop the whole process with SIGTTIN, so a reader waits
    /// while this is true. False for anything that is not a terminal, or when the call fails.
    /// </summary>
    public static bool IsBackgroundOnTerminal(int fd)
    {
        if (isatty(fd) != 1) return false;
        int foreground = tcgetpgrp(fd);
        return foreground >= 0 && foreground != getpgrp();
    }
}
