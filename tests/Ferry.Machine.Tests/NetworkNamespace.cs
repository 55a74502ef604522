using System.ComponentModel;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.ExceptionServices;
using System.Runtime.InteropServices;
using System.Security.Cryptography;

namespace Ferry.Machine.Tests;

/// <summary>
/// A network namespace a test makes for itself (<c>ip netns add ferry-test-&lt;random&gt;</c>): its taps, bridges and
/// addresses exist only there, so nothing a test sends reaches the host's own network, and <see cref="Dispose"/>
/// (<c>ip netns del</c>) takes all of it away, the taps' kernel side included.
/// </summary>
/// <remarks>
/// <para>A tap belongs to the namespace of the thread that opened <c>/dev/net/tun</c> (the kernel looks the name up,
/// or creates the device, in that file's namespace, not the caller's at TUNSETIFF), and the machine opens it in its
/// constructor. So a test builds the machine inside <see cref="Inside"/>: a thread of its own that joins the namespace
/// with <c>setns(2)</c>, runs the work, and ends. What it made keeps working from any thread: a tap fd or a socket
/// stays bound to the namespace it was made in. This stays on the test side rather than in <c>MachineOptions</c>:
/// a VMM is started inside the right namespace (<c>ip netns exec</c>), only a test shares one process between two.</para>
/// <para>Threads started from inside inherit the namespace: the machine's virtio-net receive thread and CLINT timer
/// thread do, which is harmless (they only read fds and sleep), and end with the machine. Work inside must not start
/// anything longer-lived that opens sockets (thread-pool work: the pool's new threads would land in the namespace);
/// <see cref="ThreadsInside"/> lets a test check that none is left behind.</para>
/// <para>Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN for setns) and iproute2's <c>ip</c>: without them
/// <see cref="Create"/> throws, saying which, so a network test fails rather than skipping unseen.</para>
/// </remarks>
internal sealed partial class NetworkNamespace : IDisposable
{
    private readonly string id;
    private bool disposed;

    private NetworkNamespace(string name)
    {
        Name = name;
        id = Inside(() => File.ResolveLinkTarget("/proc/thread-self/ns/net", returnFinalTarget: false)?.ToString() ?? "");
    }

    /// <summary>The namespace's name (<c>ip -n NAME</c>).</summary>
    public string Name { get; }

    /// <summary>Make a namespace with its loopback up.</summary>
    public static NetworkNamespace Create()
    {
        if (Environment.UserName != "root") throw new InvalidOperationException($"network tests need root (CAP_NET_ADMIN) to make a network namespace; running as {Environment.UserName}");
        if (!File.Exists("/dev/net/tun")) throw new InvalidOperationException("network tests need /dev/net/tun (the tun module) for the machine's tap");
        string name = "ferry-test-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4));
        Run("ip", $"netns add {name}");
        try
        {
            var ns = new NetworkNamespace(name);
            ns.Ip("link set lo up");
            // IPv4 only: the kernel's own IPv6 chatter on new links (router solicitations, MLD reports, flooded by a
            // bridge to every port) would be frames no test sent. /proc/sys/net shows the namespace of the thread.
            ns.Inside(() =>
            {
                foreach (string conf in new[] { "all", "default" })
                {
                    string path = $"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6";
                    if (File.Exists(path)) File.WriteAllText(path, "1");
                }
                return 0;
            });
            return ns;
        }
        catch
        {
            Run("ip", $"netns del {name}");
            throw;
        }
    }

    /// <summary>Run <c>ip -n NAME <paramref name="arguments"/></c>; throws with its stderr if it fails; returns its stdout.</summary>
    public string Ip(string arguments) => Run("ip", $"-n {Name} {arguments}");

    /// <summary>Run <c>bridge -n NAME <paramref name="arguments"/></c> (iproute2's bridge tool).</summary>
    public string Bridge(string arguments) => Run("bridge", $"-n {Name} {arguments}");

    /// <summary>
    /// Run <paramref name="work"/> on a new thread that has joined the namespace, wait for it, and return its result
    /// (or rethrow its exception). Sockets and taps it makes belong to the namespace.
    /// </summary>
    public T Inside<T>(Func<T> work)
    {
        ArgumentNullException.ThrowIfNull(work);
        T result = default!;
        Exception? error = null;
        var thread = new Thread(() =>
        {
            try
            {
                using (SafeHandle fd = File.OpenHandle($"/var/run/netns/{Name}", FileMode.Open, FileAccess.Read))
                {
                    if (setns((int)fd.DangerousGetHandle(), CLONE_NEWNET) != 0)
                    {
                        throw new Win32Exception(Marshal.GetLastPInvokeError(), $"setns({Name}, CLONE_NEWNET)");
                    }
                }
                result = work();
            }
            catch (Exception e)
            {
                error = e;
            }
        })
        { Name = $"netns {Name}", IsBackground = true };
        thread.Start();
        thread.Join();
        // The work's own exception, as if it had run here (a migration target's InvalidDataException stays one).
        if (error is not null) ExceptionDispatchInfo.Throw(error);
        return result;
    }

    /// <summary>A TCP connection from inside the namespace, Nagle off, with generous timeouts for a busy host.</summary>
    public Socket ConnectTcp(IPAddress address, int port) => Inside(() =>
    {
        var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true, ReceiveTimeout = 60_000, SendTimeout = 60_000 };
        try
        {
            s.Connect(address, port);
            return s;
        }
        catch
        {
            s.Dispose();
            throw;
        }
    });

    /// <summary>
    /// Names of this process's threads that are in the namespace now, after waiting up to <paramref name="settle"/> for
    /// ending ones to go: a test that disposed everything it made inside expects none.
    /// </summary>
    public IReadOnlyList<string> ThreadsInside(TimeSpan settle)
    {
        var deadline = Stopwatch.StartNew();
        while (true)
        {
            var inside = new List<string>();
            foreach (string task in Directory.EnumerateDirectories("/proc/self/task"))
            {
                try
                {
                    if (File.ResolveLinkTarget(Path.Combine(task, "ns", "net"), returnFinalTarget: false)?.ToString() != id) continue;
                    inside.Add($"{Path.GetFileName(task)} {File.ReadAllText(Path.Combine(task, "comm")).Trim()}");
                }
                catch (IOException)
                {
                    // The thread ended while we looked.
                }
            }
            if (inside.Count == 0 || deadline.Elapsed > settle) return inside;
            Thread.Sleep(50);
        }
    }

    /// <summary>Delete the namespace, and with it every device in it.</summary>
    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        Run("ip", $"netns del {Name}");
    }

    /// <summary>Run an iproute2 tool; its standard output. Throws, with its standard error, if it fails.</summary>
    public static string Run(string tool, string arguments) => HostCommand.Run(tool, arguments, "network tests need iproute2 (apt-get install iproute2)");

    private const int CLONE_NEWNET = 0x40000000;

    [LibraryImport("libc", SetLastError = true)]
    private static partial int setns(int fd, int nstype);
}
