/* SPDX-License-Identifier: MIT */
/*
 * payload_start.S - entry point and EL1 vector table of the L2 payload.
 *
 * Every vCPU starts here at EL1h with the MMU off and DAIF all masked
 * (KVM's reset state), with x0 = vCPU index (set by tk-vmm through
 * KVM_SET_ONE_REG), so no PSCI CPU_ON / MPIDR-based dispatch is needed.
 */
#include "tk_shared.h"

	.section .text.boot, "ax"
	.globl	_start
_start:
	/* TPIDR_EL1 = vCPU index, so exception handlers can find their
	 * per-vCPU area without trusting anything else. */
	msr	tpidr_el1, x0

	/* Per-vCPU stack: sp = TK_STACK_BASE + (idx + 1) * TK_STACK_SIZE */
	ldr	x1, =TK_STACK_BASE
	add	x2, x0, #1
	lsl	x2, x2, #14			/* TK_STACK_SIZE == 1 << 14 */
	add	sp, x1, x2

	adr	x1, tk_vectors
	msr	vbar_el1, x1

	/* Don't trap FP/SIMD (CPACR_EL1.FPEN = 0b11).  The C code is built
	 * with -mgeneral-regs-only, this is only belt and braces. */
	mov	x1, #(3 << 20)
	msr	cpacr_el1, x1
	isb

	bl	payload_main			/* x0 = vCPU index */
1:	wfi
	b	1b

/*
 * Vector table: 16 entries of 0x80 bytes, 2 KiB aligned.  We run at EL1
 * with SP_EL1 (EL1h), so IRQs arrive at "current EL with SP_ELx, IRQ" =
 * VBAR_EL1 + 0x280.  Everything else is unexpected and reported to the VMM.
 */
	.macro	bad_vector kind
	.balign	0x80
	mov	x0, #\kind
	b	tk_bad_exception
	.endm

	.text
	.balign	0x800
	.globl	tk_vectors
tk_vectors:
	bad_vector 0	/* 0x000 cur EL, SP0: sync   */
	bad_vector 1	/* 0x080 cur EL, SP0: IRQ    */
	bad_vector 2	/* 0x100 cur EL, SP0: FIQ    */
	bad_vector 3	/* 0x180 cur EL, SP0: SError */
	bad_vector 4	/* 0x200 cur EL, SPx: sync   */
	.balign	0x80	/* 0x280 cur EL, SPx: IRQ    */
	b	tk_irq_entry
	bad_vector 6	/* 0x300 cur EL, SPx: FIQ    */
	bad_vector 7	/* 0x380 cur EL, SPx: SError */
	bad_vector 8	/* 0x400 lower EL, A64       */
	bad_vector 9
	bad_vector 10
	bad_vector 11
	bad_vector 12	/* 0x600 lower EL, A32       */
	bad_vector 13
	bad_vector 14
	bad_vector 15

/*
 * IRQ entry: save the caller-saved registers (AAPCS64: x0-x18, x29, x30;
 * the C handler preserves x19-x28), call irq_handler(), return.
 * ELR_EL1/SPSR_EL1 need no saving: the handler keeps IRQs masked and
 * takes no synchronous exceptions, so they cannot be overwritten.
 */
tk_irq_entry:
	sub	sp, sp, #176
	stp	x0, x1, [sp, #0]
	stp	x2, x3, [sp, #16]
	stp	x4, x5, [sp, #32]
	stp	x6, x7, [sp, #48]
	stp	x8, x9, [sp, #64]
	stp	x10, x11, [sp, #80]
	stp	x12, x13, [sp, #96]
	stp	x14, x15, [sp, #112]
	stp	x16, x17, [sp, #128]
	stp	x18, x29, [sp, #144]
	str	x30, [sp, #160]
	bl	irq_handler
	ldp	x0, x1, [sp, #0]
	ldp	x2, x3, [sp, #16]
	ldp	x4, x5, [sp, #32]
	ldp	x6, x7, [sp, #48]
	ldp	x8, x9, [sp, #64]
	ldp	x10, x11, [sp, #80]
	ldp	x12, x13, [sp, #96]
	ldp	x14, x15, [sp, #112]
	ldp	x16, x17, [sp, #128]
	ldp	x18, x29, [sp, #144]
	ldr	x30, [sp, #160]
	add	sp, sp, #176
	eret

tk_bad_exception:
	bl	unexpected_exception		/* does not return */
2:	wfi
	b	2b

	.section .note.GNU-stack, "", %progbits
