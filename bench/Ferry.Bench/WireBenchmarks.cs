using System.Net;
using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using Ferry.Migration.Guest;
using Ferry.Migration.Protocol;
using Ferry.Migration.Transport;

namespace Ferry.Bench;

/// <summary>
/// Page batches of 256 Normal pages (1 MiB) from native "guest" memory over TCP loopback into native destination
/// memory: the pre-copy hot path minus the dirty log. One operation = 64 MiB per channel.
/// </summary>
[MemoryDiagnoser]
public unsafe class WireBenchmarks
{
    private const int Pages = 16384; // 64 MiB
    private void* _source;
    private void* _destination;
    private MemoryRegion[] _sourceRegions = [];
    private MemoryRegion[] _destinationRegions = [];
    private TcpMigrationListener? _listener;
    private MigrationConnection? _out;
    private MigrationConnection? _in;
    private PageBatchWriter[] _writers = [];
    private PageBatchReader[] _readers = [];

    [Params(1, 2)]
    public int Channels { get; set; }

    [Params(false, true)]
    public bool ChecksumData { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        nuint bytes = (nuint)Pages * MemoryRegion.PageSize;
        _source = NativeMemory.AlignedAlloc(bytes, 4096);
        _destination = NativeMemory.AlignedAlloc(bytes, 4096);
        new Random(1).NextBytes(new Span<byte>(_source, (int)bytes));
        NativeMemory.Clear(_destination, bytes);
        _sourceRegions = [new MemoryRegion(0, bytes, (nint)_source)];
        _destinationRegions = [new MemoryRegion(0, bytes, (nint)_destination)];
        _listener = new TcpMigrationListener(new IPEndPoint(IPAddress.Loopback, 0));
        var connect = Task.Run(() => new TcpMigrationConnector(_listener.LocalEndPoint).Connect(Channels, CancellationToken.None));
        _in = _listener.Accept(CancellationToken.None);
        _out = connect.GetAwaiter().GetResult();
        _writers = _out.Pages.Select(p => new PageBatchWriter(p)).ToArray();
        _readers = _in.Pages.Select(p => new PageBatchReader(p, _destinationRegions)).ToArray();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _out?.Dispose();
        _in?.Dispose();
        _listener?.Dispose();
        NativeMemory.AlignedFree(_source);
        NativeMemory.AlignedFree(_destination);
    }

    [Benchmark]
    public void SendAndReceive64MiBPerChannel()
    {
        var threads = new List<Thread>();
        for (int ch = 0; ch < Channels; ch++)
        {
            var w = _writers[ch];
            var r = _readers[ch];
            var region = _sourceRegions[0];
            var flags = ChecksumData ? PageBatchFlags.FinalPass | PageBatchFlags.DataChecksummed : PageBatchFlags.None;
            var send = new Thread(() =>
            {
                var runs = new PageRun[1];
                for (ulong first = 0; first < Pages; first += 256)
                {
                    runs[0] = new PageRun(first, 256, PageEncoding.Normal);
                    w.WriteBatch(0, region, runs, flags);
                }
            });
            var receive = new Thread(() =>
            {
                for (int i = 0; i < Pages / 256; i++) r.ReadNext();
            });
            send.Start();
            receive.Start();
            threads.Add(send);
            threads.Add(receive);
        }
        foreach (var t in threads) t.Join();
    }
}
