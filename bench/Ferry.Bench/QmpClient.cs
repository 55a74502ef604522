using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;

namespace Ferry.Bench;

/// <summary>
/// The smallest QMP client that drives a QEMU migration: one unix socket, one command at a time, every read bounded
/// by a timeout. Asynchronous events (STOP, RESUME, MIGRATION, ...) that arrive between answers are skipped.
/// </summary>
internal sealed class QmpClient : IDisposable
{
    private static readonly TimeSpan ReadTimeout = TimeSpan.FromSeconds(30);

    private readonly Socket socket;
    private readonly StreamReader reader;
    private readonly StreamWriter writer;

    private QmpClient(Socket socket)
    {
        this.socket = socket;
        var stream = new NetworkStream(socket, ownsSocket: false);
        reader = new StreamReader(stream, Encoding.UTF8);
        writer = new StreamWriter(stream, new UTF8Encoding(false)) { NewLine = "\n", AutoFlush = true };
    }

    /// <summary>Connect to <paramref name="path"/> (retrying while QEMU starts and creates it), read the greeting, enter command mode.</summary>
    public static QmpClient Connect(string path, TimeSpan timeout, Func<bool> processExited)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                socket.Connect(new UnixDomainSocketEndPoint(path));
                var client = new QmpClient(socket);
                client.ReadMessage(); // {"QMP": {"version": ...}}
                client.Execute("qmp_capabilities");
                return client;
            }
            catch (SocketException) when (DateTime.UtcNow < deadline && !processExited())
            {
                socket.Dispose();
                Thread.Sleep(50);
            }
            catch
            {
                socket.Dispose();
                throw;
            }
        }
    }

    /// <summary>Run <paramref name="command"/> and return its <c>return</c> value; a QMP error is an exception naming the command.</summary>
    public JsonNode? Execute(string command, JsonObject? arguments = null)
    {
        var message = new JsonObject { ["execute"] = command };
        if (arguments is not null) message["arguments"] = arguments;
        writer.WriteLine(message.ToJsonString());
        while (true)
        {
            JsonObject reply = ReadMessage();
            if (reply.ContainsKey("event")) continue;
            if (reply["error"] is JsonObject error)
            {
                throw new QmpException($"QMP {command}: {error["class"]}: {error["desc"]}");
            }
            return reply["return"];
        }
    }

    private JsonObject ReadMessage()
    {
        using var cts = new CancellationTokenSource(ReadTimeout);
        string? line;
        try
        {
            line = reader.ReadLineAsync(cts.Token).AsTask().GetAwaiter().GetResult();
        }
        catch (OperationCanceledException)
        {
            throw new QmpException($"QMP: no answer in {ReadTimeout.TotalSeconds:0} s");
        }
        if (line is null) throw new QmpException("QMP: QEMU closed the socket");
        return JsonNode.Parse(line) as JsonObject ?? throw new QmpException($"QMP: not an object: {line}");
    }

    public void Dispose()
    {
        // The writer first: it flushes into the stream the reader's disposal closes.
        writer.Dispose();
        reader.Dispose();
        socket.Dispose();
    }
}

internal sealed class QmpException(string message) : Exception(message);
