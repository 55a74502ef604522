/*
 * PVH entry, switch to long mode, interrupt stubs and the drop to ring 3.
 *
 * A PVH loader (QEMU -kernel, Firecracker, Cloud Hypervisor, Ferry) reads the XEN_ELFNOTE_PHYS32_ENTRY note and
 * starts us in 32-bit protected mode, paging off, flat CS/DS/ES/SS, interrupts off, with the physical address of
 * struct hvm_start_info in %ebx. GDTR may point anywhere, so our own GDT is loaded before any segment register is.
 */

#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define KERNEL_CS 0x08
#define KERNEL_DS 0x10

    .section .note.Xen, "a"
    .balign 4
    .long 4                         /* namesz: "Xen\0" */
    .long 8                         /* descsz: a 64-bit ELF carries the entry as 8 bytes, as Linux does */
    .long XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .quad pvh_entry
    .balign 4

    .section .text.boot, "ax"
    .code32
    .globl pvh_entry
pvh_entry:
    cli
    cld
    movl %ebx, %esi                 /* start_info; kept in esi, which rep stosl leaves alone */
    lgdt gdt_ptr
    movl $KERNEL_DS, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl %eax, %fs
    movl %eax, %gs

    /* Zero .bss (stacks and page tables live there): a loader should have, but a reset may not. */
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    shrl $2, %ecx
    xorl %eax, %eax
    rep stosl
    movl $boot_stack_top, %esp

    /* Boot page tables: identity-map the first 1 GiB with 2 MiB pages, enough to reach the image and the
     * loader's start_info; memory.c replaces them with the real map. */
    movl $boot_pdpt, %eax
    orl $3, %eax                    /* present, writable */
    movl %eax, boot_pml4
    movl $boot_pd, %eax
    orl $3, %eax
    movl %eax, boot_pdpt
    xorl %ecx, %ecx
1:  movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax                 /* present, writable, 2 MiB page */
    movl %eax, boot_pd(,%ecx,8)
    incl %ecx
    cmpl $512, %ecx
    jb 1b

    movl %cr4, %eax
    orl $0x20, %eax                 /* CR4.PAE */
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx          /* EFER */
    rdmsr
    orl $0x100, %eax                /* EFER.LME */
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax           /* CR0.PG | CR0.PE */
    movl %eax, %cr0
    ljmp $KERNEL_CS, $long_mode

    .code64
long_mode:
    movl $KERNEL_DS, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    xorl %eax, %eax
    movl %eax, %fs
    movl %eax, %gs
    movq $boot_stack_top, %rsp
    movl %esi, %edi                 /* kmain(start_info) */
    call kmain
2:  cli
    hlt
    jmp 2b

/*
 * Interrupt stubs, 16 bytes each so cpu.c finds vector n at isr_stubs + 16 * n. Each pushes a zero where the CPU
 * pushes no error code, then the vector.
 */
    .text
    .balign 16
    .globl isr_stubs
isr_stubs:
    .set vec, 0
    .rept 256
    .balign 16
    .if !(vec == 8 || (vec >= 10 && vec <= 14) || vec == 17 || vec == 21 || vec == 29 || vec == 30)
    pushq $0
    .endif
    pushq $vec
    jmp trap_common
    .set vec, vec + 1
    .endr

/* Saves only the caller-saved registers (struct frame in kernel.h): the C handler preserves the others. */
trap_common:
    pushq %rax
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    cld                             /* ring 3 may have left DF set; the ABI wants it clear */
    movq %rsp, %rdi
    call trap
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rax
    addq $16, %rsp                  /* vector and error code */
    iretq

/* enter_user(rip, rsp): iretq into ring 3 with interrupts enabled. */
    .globl enter_user
enter_user:
    movl $0x1b, %eax                /* user data selector 0x18 | RPL 3 */
    movl %eax, %ds
    movl %eax, %es
    pushq $0x1b                     /* ss */
    pushq %rsi                      /* rsp */
    pushq $0x202                    /* rflags: IF, IOPL 0 */
    pushq $0x23                     /* cs: user code 0x20 | RPL 3 */
    pushq %rdi                      /* rip */
    xorl %eax, %eax                 /* leave no kernel values in ring 3's registers */
    xorl %ecx, %ecx
    xorl %edx, %edx
    xorl %esi, %esi
    xorl %edi, %edi
    iretq

    .data
    .balign 16
    .globl gdt
gdt:
    .quad 0                         /* 0x00 null */
    .quad 0x00AF9A000000FFFF        /* 0x08 kernel code, 64-bit */
    .quad 0x00CF92000000FFFF        /* 0x10 kernel data */
    .quad 0x00CFF2000000FFFF        /* 0x18 user data, DPL 3 */
    .quad 0x00AFFA000000FFFF        /* 0x20 user code, 64-bit, DPL 3 */
    .quad 0, 0                      /* 0x28 TSS, 16 bytes, filled by cpu.c */
gdt_end:
    .balign 8
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt                       /* lgdt in 32-bit mode reads the low 4 bytes only */

    .section .bss
    .balign 4096
    .globl boot_pml4
boot_pml4: .skip 4096
boot_pdpt: .skip 4096
boot_pd:   .skip 4096
boot_stack: .skip 16384
boot_stack_top:
    .section .note.GNU-stack, "", @progbits
