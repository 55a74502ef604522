/*
 * Where RAM is, and the page tables over it.
 *
 * Physical layout (identity-mapped, virtual = physical):
 *   0 .. 4K          not mapped, so a null pointer faults
 *   4K .. 2M         kernel, 4 KiB pages, ring 0 only (the image is linked at 1 MiB)
 *   2M .. 4M         the workload's image (code, data, stack), one 2 MiB user page
 *   4M .. end        the largest RAM range above 4 MiB, 2 MiB user pages: the dirtier's counters and working set
 *   LAPIC            the 2 MiB page holding the xAPIC registers, ring 0, uncached
 * Nothing else is mapped, so a stray access faults with a clear message instead of reading a hole.
 */
#include "kernel.h"
#include "x86.h"

#define START_INFO_MAGIC 0x336ec578u /* XEN_HVM_START_MAGIC_VALUE */
#define E820_RAM 1
#define MAX_RANGES 32
#define BOOT_MAP_END (1 * GiB)      /* what entry.S mapped */
#define MAP_END (16 * GiB)          /* RAM above this is ignored: 16 page directories cover it */
#define USER_IMAGE_BASE (2 * MiB)
#define USER_RAM_MIN (4 * MiB)

#define PTE_P 0x1UL
#define PTE_W 0x2UL
#define PTE_U 0x4UL
#define PTE_PWT 0x8UL
#define PTE_PCD 0x10UL
#define PTE_PS 0x80UL

/* xen/include/public/arch-x86/hvm/start_info.h */
struct hvm_start_info {
    u32 magic;
    u32 version;
    u32 flags;
    u32 nr_modules;
    u64 modlist_paddr;
    u64 cmdline_paddr;
    u64 rsdp_paddr;
    u64 memmap_paddr;   /* version >= 1 */
    u32 memmap_entries; /* version >= 1 */
    u32 reserved;
};

struct hvm_memmap_table_entry {
    u64 addr;
    u64 size;
    u32 type;
    u32 reserved;
};

static struct ram_range ram[MAX_RANGES];
static u32 nr_ram;
static struct ram_range user_ram;

static u64 pml4[512] __attribute__((aligned(4096)));
static u64 pdpt[512] __attribute__((aligned(4096)));
static u64 pd[MAP_END / GiB][512] __attribute__((aligned(4096)));
static u64 pt0[512] __attribute__((aligned(4096)));

extern char __user_start[], __user_end[], __kernel_end[];

static void fail(const char *what)
{
    char line[160];
    struct buf b = BUF_ON(line);
    b_str(&b, "panic: ");
    b_str(&b, what);
    panic(&b);
}

/* Fallback when start_info has no memory map (version 0): what QEMU-style firmware put in CMOS. */
static u8 cmos(u8 reg)
{
    outb(0x70, reg);
    return inb(0x71);
}

static void memmap_from_cmos(void)
{
    u64 above16m = ((u64)cmos(0x35) << 8 | cmos(0x34)) * 64 * KiB;
    u64 above1m = ((u64)cmos(0x31) << 8 | cmos(0x30)) * KiB;
    if (above16m && above16m != 0xffff * 64 * KiB)
        ram[nr_ram++] = (struct ram_range){ 1 * MiB, 15 * MiB + above16m };
    else if (above1m && above1m != 0xffff * KiB)
        ram[nr_ram++] = (struct ram_range){ 1 * MiB, above1m };
}

static bool in_boot_map(u64 pa, u64 len)
{
    return pa < BOOT_MAP_END && len <= BOOT_MAP_END - pa;
}

void memory_init(u32 start_info_pa, char *cmdline, usize cap)
{
    const struct hvm_start_info *si = (const struct hvm_start_info *)(u64)start_info_pa;
    if (!in_boot_map(start_info_pa, sizeof(*si)) || si->magic != START_INFO_MAGIC)
        fail("no PVH start_info at ebx (boot this ELF through its PVH note)");

    cmdline[0] = 0;
    if (si->cmdline_paddr) {
        const char *src = (const char *)si->cmdline_paddr;
        usize n = 0;
        while (in_boot_map(si->cmdline_paddr + n, 1) && src[n] && n + 1 < cap) {
            cmdline[n] = src[n];
            n++;
        }
        cmdline[n] = 0;
        if (n + 1 >= cap && src[n]) /* src[n] was range-checked by the loop in this case */
            fail("command line too long (1023 bytes at most)");
    }

    if (si->version >= 1 && si->memmap_paddr && si->memmap_entries) {
        const struct hvm_memmap_table_entry *e = (const void *)si->memmap_paddr;
        if (!in_boot_map(si->memmap_paddr, (u64)si->memmap_entries * sizeof(*e)))
            fail("start_info memory map beyond the first GiB");
        for (u32 i = 0; i < si->memmap_entries && nr_ram < MAX_RANGES; i++)
            if (e[i].type == E820_RAM && e[i].size)
                ram[nr_ram++] = (struct ram_range){ e[i].addr, e[i].size };
    } else {
        memmap_from_cmos();
    }
    if (nr_ram == 0)
        fail("no memory map: start_info has none and CMOS gives no size");

    /* The image needs RAM from 1 MiB to 4 MiB (kernel, then the workload image at 2 MiB). */
    bool image_ok = false;
    for (u32 i = 0; i < nr_ram; i++)
        if (ram[i].base <= 1 * MiB && ram[i].base + ram[i].size >= USER_RAM_MIN)
            image_ok = true;
    if (!image_ok)
        fail("need RAM from 1 MiB to 4 MiB for the image (give the VM at least 8 MiB)");

    /* The workload gets the largest RAM range above 4 MiB, in whole 2 MiB pages. */
    for (u32 i = 0; i < nr_ram; i++) {
        u64 base = ALIGN_UP(MAX(ram[i].base, USER_RAM_MIN), 2 * MiB);
        u64 end = ALIGN_DOWN(MIN(ram[i].base + ram[i].size, MAP_END), 2 * MiB);
        if (end > base && end - base > user_ram.size)
            user_ram = (struct ram_range){ base, end - base };
    }
}

struct ram_range memory_user_range(void) { return user_ram; }

u64 memory_total(void)
{
    u64 t = 0;
    for (u32 i = 0; i < nr_ram; i++)
        t += ram[i].size;
    return t;
}

static void map_2m(u64 pa, u64 flags)
{
    pd[pa / GiB][(pa / (2 * MiB)) % 512] = pa | PTE_PS | flags;
}

void paging_init(u64 apic_base)
{
    pml4[0] = (u64)pdpt | PTE_P | PTE_W | PTE_U; /* upper levels allow everything; the leaf decides */
    for (u64 i = 0; i < ARRAY_SIZE(pd); i++)
        pdpt[i] = (u64)pd[i] | PTE_P | PTE_W | PTE_U;
    pd[0][0] = (u64)pt0 | PTE_P | PTE_W | PTE_U;
    for (u64 i = 1; i < 512; i++) /* page 0 stays absent */
        pt0[i] = i * PAGE_SIZE | PTE_P | PTE_W;
    map_2m(USER_IMAGE_BASE, PTE_P | PTE_W | PTE_U);
    for (u64 pa = user_ram.base; pa < user_ram.base + user_ram.size; pa += 2 * MiB)
        map_2m(pa, PTE_P | PTE_W | PTE_U);
    if (apic_base && apic_base < MAP_END)
        map_2m(ALIGN_DOWN(apic_base, 2 * MiB), PTE_P | PTE_W | PTE_PCD | PTE_PWT);
    write_cr3((u64)pml4);
}

bool user_range_ok(u64 addr, u64 len)
{
    u64 img = USER_IMAGE_BASE, ram_end = user_ram.base + user_ram.size;
    if (addr >= img && addr < img + 2 * MiB)
        return len <= img + 2 * MiB - addr;
    if (addr >= user_ram.base && addr < ram_end)
        return len <= ram_end - addr;
    return false;
}
