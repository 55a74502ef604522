using System.Diagnostics;
using System.Runtime.InteropServices;
using static Ferry.Linux.Libc;

namespace Ferry.Linux.Tests;

/// <summary>
/// Userfaultfd over real anonymous memory, with the test thread as the fault handler. Accesses that may fault run on
/// helper threads inside libc (memcpy, memset, write), never in managed code: a managed thread blocked on a missing
/// page can stall every GC of the test host (see Userfaultfd's remarks). Every wait is bounded, so a bug fails a test
/// instead of hanging the run; a fixture's Dispose closes the userfaultfd first, which releases any thread still blocked.
/// </summary>
public sealed unsafe partial class UserfaultfdTests
{
    private const int Page = 4096;

    /// <summary>Bound on every wait. Faults are served in microseconds; this only decides how long a bug takes to fail.</summary>
    private const int PatienceMilliseconds = 10_000;

    [Fact]
    public void IoctlNumbersAndLayoutsMatchTheKernelHeader()
    {
        // Printed by gcc from /usr/include/linux/userfaultfd.h (linux-libc-dev 6.1, x86-64).
        Assert.Equal(0xAA00u, USERFAULTFD_IOC_NEW);
        Assert.Equal(0xC018AA3Fu, UFFDIO_API);
        Assert.Equal(0xC020AA00u, UFFDIO_REGISTER);
        Assert.Equal(0x8010AA01u, UFFDIO_UNREGISTER);
        Assert.Equal(0x8010AA02u, UFFDIO_WAKE);
        Assert.Equal(0xC028AA03u, UFFDIO_COPY);
        Assert.Equal(0xC020AA04u, UFFDIO_ZEROPAGE);
        Assert.Equal(24, sizeof(uffdio_api));
        Assert.Equal(16, sizeof(uffdio_range));
        Assert.Equal(32, sizeof(uffdio_register));
        Assert.Equal(40, sizeof(uffdio_copy));
        Assert.Equal(32, sizeof(uffdio_zeropage));
        Assert.Equal(32, sizeof(uffd_msg));
        uffd_msg message = default;
        Assert.Equal(8, (byte*)&message.arg.pagefault.flags - (byte*)&message);
        Assert.Equal(16, (byte*)&message.arg.pagefault.address - (byte*)&message);
        if (RuntimeInformation.ProcessArchitecture == Architecture.X64)
        {
            Assert.Equal(323, SYS_userfaultfd);
        }
    }

    [Fact]
    public void AThreadReadingAMissingPageWaitsUntilCopyInstallsItAndThenSeesItsBytes()
    {
        using var guest = Guest.Open();
        guest.Uffd.RegisterMissing(guest.Memory.Address, (nuint)guest.Memory.Length);
        Fill(guest.Source, Page, seed: 1);

        Thread reader = guest.Run(() => Native.memcpy((nint)guest.Scratch, guest.PageAt(5), Page));
        nint fault = guest.NextFault();

        Assert.Equal(guest.PageAt(5), fault);
        Assert.False(reader.Join(100), "the reader went on before its page was installed");
        Assert.Equal(new Userfaultfd.CopyResult(Page, 0), guest.Uffd.Copy(fault, (nint)guest.Source, Page));
        Assert.True(reader.Join(PatienceMilliseconds), "the reader was not woken by UFFDIO_COPY");
        Assert.True(new ReadOnlySpan<byte>(guest.Scratch, Page).SequenceEqual(new ReadOnlySpan<byte>(guest.Source, Page)));
        Assert.Equal(0, guest.Uffd.ReadFaults(stackalloc nint[4], 0));
    }

    [Fact]
    public void AThreadWritingAMissingPageWaitsAndItsWriteLandsOnTheInstalledPage()
    {
        using var guest = Guest.Open();
        guest.Uffd.RegisterMissing(guest.Memory.Address, (nuint)guest.Memory.Length);
        Fill(guest.Source, Page, seed: 2);

        Thread writer = guest.Run(() => Native.memset(guest.PageAt(7) + 100, 0x5A, 1));
        nint fault = guest.NextFault();

        Assert.Equal(guest.PageAt(7), fault);
        Assert.False(writer.Join(100), "the writer went on before its page was installed");
        Assert.Equal(new Userfaultfd.CopyResult(Page, 0), guest.Uffd.Copy(fault, (nint)guest.Source, Page));
        Assert.True(writer.Join(PatienceMilliseconds), "the writer was not woken by UFFDIO_COPY");
        // The page is present now, so reading it from managed code cannot fault.
        var page = new ReadOnlySpan<byte>((byte*)guest.PageAt(7), Page);
        Assert.Equal(0x5A, page[100]);
        Assert.True(page[..100].SequenceEqual(new ReadOnlySpan<byte>(guest.Source, 100)));
        Assert.True(page[101..].SequenceEqual(new ReadOnlySpan<byte>(guest.Source + 101, Page - 101)));
    }

    [Fact]
    public void ZeroAnswersAFaultWithZerosAndThePageFaultsNoMore()
    {
        using var guest = Guest.Open();
        guest.Uffd.RegisterMissing(guest.Memory.Address, (nuint)guest.Memory.Length);
        new Span<byte>(guest.Scratch, Page).Fill(0xFF);

        Thread reader = guest.Run(() => Native.memcpy((nint)guest.Scratch, guest.PageAt(3), Page));
        nint fault = guest.NextFault();
        Assert.Equal(guest.PageAt(3), fault);
        Assert.Equal(new Userfaultfd.CopyResult(Page, 0), guest.Uffd.Zero(fault, Page));
        Assert.True(reader.Join(PatienceMilliseconds), "the reader was not woken by UFFDIO_ZEROPAGE");
        Assert.Equal(-1, new ReadOnlySpan<byte>(guest.Scratch, Page).IndexOfAnyExcept((byte)0));

        // Writing the zero page is an ordinary copy-on-write fault, not a missing page: nothing is reported.
        Thread writer = guest.Run(() => Native.memset(guest.PageAt(3), 0x11, Page));
        Assert.True(writer.Join(PatienceMilliseconds), "writing a zero-filled page blocked");
        Assert.Equal(0, guest.Uffd.ReadFaults(stackalloc nint[4], 0));
        Assert.Equal(0x11, ((byte*)guest.PageAt(3))[Page - 1]);
    }

    [Fact]
    public void PagesAlreadyPresentAreReportedAndLeftUnchangedByCopyAndZero()
    {
        using var guest = Guest.Open();
        byte* memory = (byte*)guest.Memory.Address;
        memory[9 * Page] = 0x99; // present before registration: registering does not make it missing
        guest.Uffd.RegisterMissing(guest.Memory.Address, (nuint)guest.Memory.Length);
        Fill(guest.Source, 3 * Page, seed: 3);
        byte* first = stackalloc byte[Page];
        Fill(first, Page, seed: 4);
        Assert.Equal(new Userfaultfd.CopyResult(Page, 0), guest.Uffd.Copy(guest.PageAt(2), AlignedCopy(guest, first), Page));

        // Pages 1 to 3 at once: the kernel stops at page 2, the loop steps over it and installs page 3.
        Assert.Equal(new Userfaultfd.CopyResult(2 * Page, Page), guest.Uffd.Copy(guest.PageAt(1), (nint)guest.Source, 3 * Page));
        Assert.Equal(new Userfaultfd.CopyResult(0, Page), guest.Uffd.Copy(guest.PageAt(9), (nint)guest.Source, Page));
        Assert.Equal(new Userfaultfd.CopyResult(0, 3 * Page), guest.Uffd.Zero(guest.PageAt(1), 3 * Page));

        Assert.True(new ReadOnlySpan<byte>(memory + Page, Page).SequenceEqual(new ReadOnlySpan<byte>(guest.Source, Page)));
        Assert.True(new ReadOnlySpan<byte>(memory + (2 * Page), Page).SequenceEqual(new ReadOnlySpan<byte>(first, Page)));
        Assert.True(new ReadOnlySpan<byte>(memory + (3 * Page), Page).SequenceEqual(new ReadOnlySpan<byte>(guest.Source + (2 * Page), Page)));
        Assert.Equal(0x99, memory[9 * Page]);
        Assert.Equal(0, memory[(9 * Page) + 1]);
    }

    [Fact]
    public void ARangeLongerThanOneCallIsInstalledWholeAcrossCallsSteppingOverPresentPages()
    {
        // 64 pages: four calls' worth; pages 16 (a call's first) and 40 (inside one) are present already.
        const int Pages = 4 * (Userfaultfd.MaxBytesPerCall / Page);
        using var guest = Guest.Open(pages: Pages, sourcePages: Pages);
        byte* memory = (byte*)guest.Memory.Address;
        memory[16 * Page] = 0x16;
        memory[40 * Page] = 0x40;
        guest.Uffd.RegisterMissing(guest.Memory.Address, (nuint)guest.Memory.Length);
        Fill(guest.Source, Pages * Page, seed: 7);

        Assert.Equal(new Userfaultfd.CopyResult((Pages - 2) * Page, 2 * Page), guest.Uffd.Copy(guest.PageAt(0), (nint)guest.Source, Pages * Page));

        for (int p = 0; p < Pages; p++)
        {
            if (p is 16 or 40) continue;
            Assert.True(new ReadOnlySpan<byte>(memory + (p * Page), Page).SequenceEqual(new ReadOnlySpan<byte>(guest.Source + (p * Page), Page)), $"page {p}");
        }
        Assert.Equal(0x16, memory[16 * Page]);
        Assert.Equal(0x40, memory[40 * Page]);
        // Every page is present now: a zero fill over all of them installs nothing, in as many calls.
        Assert.Equal(new Userfaultfd.CopyResult(0, Pages * Page), guest.Uffd.Zero(guest.PageAt(0), Pages * Page));
    }

    [Fact]
    public void DroppingARegisteredPageWithDontNeedMakesItsNextAccessFaultAgain()
    {
        using var guest = Guest.Open();
        guest.Uffd.RegisterMissing(guest.Memory.Address, (nuint)guest.Memory.Length);
        Fill(guest.Source, 2 * Page, seed: 5);
        guest.Uffd.Copy(guest.PageAt(4), (nint)guest.Source, Page);
        Thread before = guest.Run(() => Native.memcpy((nint)guest.Scratch, guest.PageAt(4), Page));
        Assert.True(before.Join(PatienceMilliseconds), "reading an installed page blocked");
        Assert.Equal(0, guest.Uffd.ReadFaults(stackalloc nint[4], 0));

        guest.Memory.DropPages(4 * Page, Page);

        Thread after = guest.Run(() => Native.memcpy((nint)guest.Scratch, guest.PageAt(4), Page));
        nint fault = guest.NextFault();
        Assert.Equal(guest.PageAt(4), fault);
        Assert.Equal(new Userfaultfd.CopyResult(Page, 0), guest.Uffd.Copy(fault, (nint)guest.Source + Page, Page));
        Assert.True(after.Join(PatienceMilliseconds), "the reader was not woken by UFFDIO_COPY");
        Assert.True(new ReadOnlySpan<byte>(guest.Scratch, Page).SequenceEqual(new ReadOnlySpan<byte>(guest.Source + Page, Page)));
    }

    [Fact]
    public void ServingAFaultAllocatesNothing()
    {
        using var guest = Guest.Open();
        guest.Uffd.RegisterMissing(guest.Memory.Address, (nuint)guest.Memory.Length);
        Fill(guest.Source, Page, seed: 6);
        Span<nint> faults = stackalloc nint[4];
        long allocated = 0;
        for (int round = 0; round < 2; round++) // the first round warms up (JIT, static constructors); the second counts
        {
            Thread reader = guest.Run(() => Native.memcpy((nint)guest.Scratch, guest.PageAt(10 + round), Page));
            long before = GC.GetAllocatedBytesForCurrentThread();
            int count = guest.Uffd.ReadFaults(faults, PatienceMilliseconds);
            Userfaultfd.CopyResult installed = guest.Uffd.Copy(faults[0], (nint)guest.Source, Page);
            Userfaultfd.CopyResult again = guest.Uffd.Copy(faults[0], (nint)guest.Source, Page);
            Userfaultfd.CopyResult zero = guest.Uffd.Zero(guest.PageAt(12 + round), Page);
            allocated = GC.GetAllocatedBytesForCurrentThread() - before;

            Assert.Equal(1, count);
            Assert.Equal(new Userfaultfd.CopyResult(Page, 0), installed);
            Assert.Equal(new Userfaultfd.CopyResult(0, Page), again);
            Assert.Equal(new Userfaultfd.CopyResult(Page, 0), zero);
            Assert.True(reader.Join(PatienceMilliseconds), "the reader was not woken by UFFDIO_COPY");
        }

        Assert.Equal(0, allocated);
    }

    [Fact]
    public void DisposeEndsAReadFaultsWaitPromptly()
    {
        using var guest = Guest.Open();
        int tid = 0;
        int result = -1;
        long returned = 0;
        Thread waiter = guest.Run(() =>
        {
            Volatile.Write(ref tid, Native.gettid());
            try
            {
                result = guest.Uffd.ReadFaults(new nint[4], timeoutMilliseconds: 60_000);
            }
            catch (ObjectDisposedException)
            {
                result = -2; // Dispose won the race to the call: the test failed to wait until the waiter slept
            }

            returned = Stopwatch.GetTimestamp();
        });
        WaitUntilSleeping(() => Volatile.Read(ref tid));

        long disposed = Stopwatch.GetTimestamp();
        guest.Uffd.Dispose();

        Assert.True(waiter.Join(PatienceMilliseconds), "ReadFaults did not return after Dispose");
        Assert.Equal(0, result);
        // Measured 0.5-0.9 ms here (thread wake-up included); 2 s leaves room for a loaded CI box and still tells
        // "woken" from "timed out after 60 s".
        Assert.InRange(Stopwatch.GetElapsedTime(disposed, returned), TimeSpan.Zero, TimeSpan.FromSeconds(2));
        Assert.Throws<ObjectDisposedException>(() => guest.Uffd.ReadFaults(new nint[1], 0));
    }

    [Fact]
    public void DisposeReleasesAThreadBlockedOnAFaultWithAZeroPage()
    {
        using var guest = Guest.Open();
        guest.Uffd.RegisterMissing(guest.Memory.Address, (nuint)guest.Memory.Length);
        new Span<byte>(guest.Scratch, Page).Fill(0xFF);
        Thread reader = guest.Run(() => Native.memcpy((nint)guest.Scratch, guest.PageAt(6), Page));
        Assert.Equal(guest.PageAt(6), guest.NextFault());

        guest.Uffd.Dispose();

        Assert.True(reader.Join(PatienceMilliseconds), "closing the userfaultfd did not release the reader");
        Assert.Equal(-1, new ReadOnlySpan<byte>(guest.Scratch, Page).IndexOfAnyExcept((byte)0));
    }

    [Fact]
    public void AKernelAccessToAMissingPageWaitsForItLikeKvmWould()
    {
        using var guest = Guest.Open();
        guest.Uffd.RegisterMissing(guest.Memory.Address, (nuint)guest.Memory.Length);
        int eventFd = eventfd(0, EFD_CLOEXEC);
        Assert.True(eventFd >= 0, "eventfd failed");
        try
        {
            // write(2) to an eventfd reads its 8 bytes with copy_from_user: a fault taken in kernel mode, as KVM's.
            nint written = 0;
            int errno = 0;
            Thread writer = guest.Run(() =>
            {
                written = write(eventFd, (void*)guest.PageAt(8), sizeof(ulong));
                errno = written < 0 ? Marshal.GetLastPInvokeError() : 0;
            });
            if (guest.Uffd.UserModeOnly)
            {
                Assert.True(writer.Join(PatienceMilliseconds));
                Assert.Equal(EFAULT, errno);
                return;
            }

            Assert.Equal(guest.PageAt(8), guest.NextFault());
            new Span<byte>(guest.Source, Page).Clear();
            *(ulong*)guest.Source = 42;
            guest.Uffd.Copy(guest.PageAt(8), (nint)guest.Source, Page);
            Assert.True(writer.Join(PatienceMilliseconds), "the syscall was not woken by UFFDIO_COPY");
            Assert.Equal(sizeof(ulong), written);
            ulong counter = 0;
            Assert.Equal(sizeof(ulong), read(eventFd, &counter, sizeof(ulong)));
            Assert.Equal(42UL, counter);
        }
        finally
        {
            close(eventFd);
        }
    }

    [Fact]
    public void RangesThatAreNotWholePagesAreRefusedBeforeTheKernelSeesThem()
    {
        using var guest = Guest.Open();
        Assert.Throws<ArgumentException>(() => guest.Uffd.RegisterMissing(guest.Memory.Address + 1, Page));
        Assert.Throws<ArgumentException>(() => guest.Uffd.RegisterMissing(guest.Memory.Address, 100));
        Assert.Throws<ArgumentException>(() => guest.Uffd.Copy(guest.PageAt(1), (nint)guest.Source + 8, Page));
        Assert.Throws<ArgumentException>(() => guest.Uffd.Zero(guest.PageAt(1), 0));
        Assert.Throws<ArgumentException>(() => guest.Uffd.ReadFaults([], 0));
    }

    /// <summary>Deterministic non-zero bytes, different per <paramref name="seed"/>.</summary>
    private static void Fill(byte* destination, int length, int seed)
    {
        for (int i = 0; i < length; i++)
        {
            destination[i] = (byte)(((i * 31) + (seed * 17)) | 1);
        }
    }

    /// <summary>UFFDIO_COPY wants a page-aligned source: stage <paramref name="page"/> in the fixture's spare page.</summary>
    private static nint AlignedCopy(Guest guest, byte* page)
    {
        byte* spare = guest.Source + (3 * Page);
        new ReadOnlySpan<byte>(page, Page).CopyTo(new Span<byte>(spare, Page));
        return (nint)spare;
    }

    /// <summary>Wait (bounded) until the thread whose id <paramref name="tid"/> returns is asleep in the kernel.</summary>
    private static void WaitUntilSleeping(Func<int> tid)
    {
        var clock = Stopwatch.StartNew();
        while (clock.ElapsedMilliseconds < PatienceMilliseconds)
        {
            int id = tid();
            // /proc/<pid>/task/<tid>/stat: "tid (comm) S ..."; the state follows the last ')'.
            string? stat = id == 0 ? null : File.ReadAllText($"/proc/self/task/{id}/stat");
            if (stat is not null && stat[stat.LastIndexOf(')') + 2] == 'S')
            {
                return;
            }

            Thread.Sleep(5);
        }

        Assert.Fail("the waiter never went to sleep");
    }

    /// <summary>
    /// 16 registered-able pages (or as many as asked), a userfaultfd, page-aligned staging buffers and the helper threads touching memory.
    /// Dispose closes the userfaultfd first (releasing blocked threads), joins them, and frees memory only if all ended:
    /// unmapping under a thread still inside it would kill the test host with SIGSEGV.
    /// </summary>
    private sealed class Guest : IDisposable
    {
        private readonly List<Thread> _threads = [];

        private Guest(Userfaultfd uffd, int pages, int sourcePages)
        {
            Uffd = uffd;
            Memory = GuestMemoryMapping.Create((ulong)pages * Page, transparentHugePages: false);
            Source = (byte*)NativeMemory.AlignedAlloc((nuint)sourcePages * Page, Page);
            Scratch = (byte*)NativeMemory.AlignedAlloc(Page, Page);
        }

        public Userfaultfd Uffd { get; }

        public GuestMemoryMapping Memory { get; }

        /// <summary>Page-aligned pages to copy from (four unless asked otherwise).</summary>
        public byte* Source { get; }

        /// <summary>One page the helper threads copy into.</summary>
        public byte* Scratch { get; }

        /// <summary>Open a userfaultfd, or skip the test with the reason this host has none.</summary>
        public static Guest Open(int pages = 16, int sourcePages = 4)
        {
            try
            {
                return new Guest(Userfaultfd.Open(), pages, sourcePages);
            }
            catch (UserfaultfdUnavailableException e)
            {
                Assert.Skip(e.Message);
                throw;
            }
        }

        public nint PageAt(int index) => Memory.Address + (index * Page);

        /// <summary>Run <paramref name="access"/> on a new background thread (it may block on a fault).</summary>
        public Thread Run(Action access)
        {
            var thread = new Thread(() => access()) { IsBackground = true, Name = "uffd test access" };
            _threads.Add(thread);
            thread.Start();
            return thread;
        }

        /// <summary>The one fault that must come within the patience.</summary>
        public nint NextFault()
        {
            Span<nint> faults = stackalloc nint[4];
            int count = Uffd.ReadFaults(faults, PatienceMilliseconds);
            Assert.Equal(1, count);
            return faults[0];
        }

        public void Dispose()
        {
            Uffd.Dispose();
            bool ended = true;
            foreach (Thread thread in _threads)
            {
                ended &= thread.Join(PatienceMilliseconds);
            }

            if (!ended)
            {
                Memory.SetHandleAsInvalid(); // leak rather than unmap under a live thread
                return;
            }

            Memory.Dispose();
            NativeMemory.AlignedFree(Source);
            NativeMemory.AlignedFree(Scratch);
        }
    }

    /// <summary>libc entry points for the helper threads: a fault inside them blocks a thread in preemptive GC mode.</summary>
    private static partial class Native
    {
        [LibraryImport("libc")]
        public static partial nint memcpy(nint destination, nint source, nuint count);

        [LibraryImport("libc")]
        public static partial nint memset(nint destination, int value, nuint count);

        [LibraryImport("libc")]
        public static partial int gettid();
    }
}
