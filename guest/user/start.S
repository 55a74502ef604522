/* Ring-3 entry: zero the workload's .bss (natively: ring-3 code is not emulated under PVM), then run it. */
    .text
    .globl user_start
user_start:
    cld
    leaq __user_bss_start(%rip), %rdi
    leaq __user_bss_end(%rip), %rcx
    subq %rdi, %rcx
    shrq $3, %rcx
    xorl %eax, %eax
    rep stosq
    leaq user_stack_top(%rip), %rsp
    call user_main
    ud2                             /* user_main does not return; SVC with garbage rax -> panic */

    .section .bss
    .balign 16
user_stack: .skip 65536
    .globl user_stack_top
user_stack_top:
    .section .note.GNU-stack, "", @progbits
