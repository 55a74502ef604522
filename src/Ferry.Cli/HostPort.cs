using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace Ferry.Cli;

/// <summary>
/// <c>HOST:PORT</c> as the migration commands take it: an IPv4 address, <c>[IPv6]</c>, or a host name resolved here
/// (IPv4 first, as most migration networks are).
/// </summary>
internal static class HostPort
{
    /// <summary>
    /// Parse and resolve <paramref name="text"/>; <paramref name="allowPortZero"/> for a listener (the kernel picks a
    /// port). <paramref name="reason"/> follows the quoted text in a message: "'x' is not HOST:PORT".
    /// </summary>
    public static bool TryParse(string? text, bool allowPortZero, out IPEndPoint endpoint, out string reason)
    {
        endpoint = new IPEndPoint(IPAddress.None, 0);
        text ??= "";
        int colon = text.LastIndexOf(':');
        if (colon <= 0 || colon == text.Length - 1)
        {
            reason = "is not HOST:PORT";
            return false;
        }
        string host = text[..colon];
        if (!ushort.TryParse(text.AsSpan(colon + 1), NumberStyles.None, CultureInfo.InvariantCulture, out ushort port) || (port == 0 && !allowPortZero))
        {
            reason = $"has a port that is not a number from {(allowPortZero ? 0 : 1)} to 65535";
            return false;
        }
        if (host.StartsWith('[') && host.EndsWith(']')) host = host[1..^1];
        if (IPAddress.TryParse(host, out var address))
        {
            endpoint = new IPEndPoint(address, port);
            reason = "";
            return true;
        }
        try
        {
            IPAddress[] addresses = Dns.GetHostAddresses(host);
            IPAddress? chosen = addresses.FirstOrDefault(a => a.AddressFamily == AddressFamily.InterNetwork) ?? addresses.FirstOrDefault();
            if (chosen is null)
            {
                reason = "names a host with no address";
                return false;
            }
            endpoint = new IPEndPoint(chosen, port);
            reason = "";
            return true;
        }
        catch (Exception e) when (e is SocketException or ArgumentException)
        {
            reason = $"names a host that cannot be resolved: {e.Message}";
            return false;
        }
    }
}
