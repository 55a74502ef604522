using System.Net.Sockets;

namespace Ferry.Linux.Tests;

public class NonBlockingTests
{
    [Fact]
    public void ClearNonBlockingMakesAnFdBlockingAgainAndLeavesABlockingOneAsItIs()
    {
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        socket.Blocking = false; // O_NONBLOCK on the fd
        int fd = (int)socket.Handle;
        Assert.True(IsNonBlocking(fd));

        Libc.ClearNonBlocking(fd);
        Assert.False(IsNonBlocking(fd));
        Libc.ClearNonBlocking(fd);
        Assert.False(IsNonBlocking(fd));
    }

    [Fact]
    public void ClearNonBlockingOnAnFdThatIsNotOpenThrowsWithItsErrno()
    {
        var e = Assert.Throws<LinuxException>(() => Libc.ClearNonBlocking(-1));
        Assert.Equal(9, e.Errno); // EBADF
    }

    /// <summary>O_NONBLOCK (04000) in the octal flags line of /proc/self/fdinfo.</summary>
    private static bool IsNonBlocking(int fd)
    {
        string line = File.ReadAllLines($"/proc/self/fdinfo/{fd}").Single(l => l.StartsWith("flags:", StringComparison.Ordinal));
        return (Convert.ToInt32(line["flags:".Length..].Trim(), 8) & Libc.O_NONBLOCK) != 0;
    }
}
