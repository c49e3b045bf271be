/* SPDX-License-Identifier: MIT */
/*
 * payload.c - freestanding L2 payload (EL1, MMU off) for tk-vmm.
 *
 * Runs on every vCPU.  It sets up the GICv3 CPU interface and its own
 * redistributor, vCPU0 also sets up the distributor, then it runs the
 * scenario selected by the VMM in the shared area and counts everything
 * it sends, issues and acknowledges (see tk_shared.h).  When all its work
 * is done it rings the "done" doorbell (an MMIO write to an unbacked IPA).
 *
 * Built with -mgeneral-regs-only -mstrict-align: with the MMU off every
 * data access is Device-nGnRnE, so unaligned accesses would fault.
 */
#include <stdint.h>
#include "tk_shared.h"

typedef uint64_t u64;
typedef uint32_t u32;

#define SH ((volatile struct tk_shared *)TK_SHARED_BASE)

/* ---- system register helpers --------------------------------------- */
#define __str1(x) #x
#define __str(x)  __str1(x)
#define read_sysreg(r) ({ u64 __v; \
	asm volatile("mrs %0, " __str(r) : "=r"(__v) :: "memory"); __v; })
#define write_sysreg(r, v) \
	asm volatile("msr " __str(r) ", %0" :: "r"((u64)(v)) : "memory")
#define isb()         asm volatile("isb" ::: "memory")
#define irq_disable() asm volatile("msr daifset, #2" ::: "memory")
#define irq_enable()  asm volatile("msr daifclr, #2" ::: "memory")

/* GICv3 CPU interface registers by encoding (binutils-version agnostic). */
#define ICC_PMR_EL1    S3_0_C4_C6_0
#define ICC_IAR1_EL1   S3_0_C12_C12_0
#define ICC_EOIR1_EL1  S3_0_C12_C12_1
#define ICC_SGI1R_EL1  S3_0_C12_C11_5
#define ICC_SRE_EL1    S3_0_C12_C12_5
#define ICC_IGRPEN1_EL1 S3_0_C12_C12_7

/* Distributor / redistributor register offsets (GICv3 spec). */
#define GICD_CTLR       0x0000
#define GICD_ISENABLER  0x0100
#define GICD_ICFGR      0x0C00
#define GICD_IROUTER    0x6000
#define GICR_TYPER      0x0008
#define GICR_ISENABLER0 0x0100           /* in the SGI_base frame */
#define GICR_TYPER_LAST (1u << 4)

/*
 * MMIO accessors.  Plain "str/ldr reg, [reg]" so that the data abort has a
 * valid instruction syndrome (ESR.ISV=1): KVM can only emulate (vGIC) or
 * forward (KVM_EXIT_MMIO) accesses with ISV set.
 */
static inline void mmio_w32(u64 a, u32 v)
{
	asm volatile("str %w0, [%1]" :: "r"(v), "r"(a) : "memory");
}
static inline void mmio_w64(u64 a, u64 v)
{
	asm volatile("str %0, [%1]" :: "r"(v), "r"(a) : "memory");
}
static inline u32 mmio_r32(u64 a)
{
	u32 v;
	asm volatile("ldr %w0, [%1]" : "=r"(v) : "r"(a) : "memory");
	return v;
}

/* GIC register accessors: each access is a stage-2 data abort that KVM's
 * vGIC emulates in-kernel; count them so the trace can be reconciled. */
static inline u32 gic_r32(volatile struct tk_vcpu_area *me, u64 a)
{
	me->gic_mmio++;
	return mmio_r32(a);
}
static inline void gic_w32(volatile struct tk_vcpu_area *me, u64 a, u32 v)
{
	me->gic_mmio++;
	mmio_w32(a, v);
}
static inline void gic_w64(volatile struct tk_vcpu_area *me, u64 a, u64 v)
{
	me->gic_mmio++;
	mmio_w64(a, v);
}

static inline u64 cntvct(void)
{
	isb();
	return read_sysreg(cntvct_el0);
}

/* Affinity as used by GICR_TYPER[63:32]: Aff3.Aff2.Aff1.Aff0 packed. */
static inline u32 mpidr_to_typer_aff(u64 mpidr)
{
	return (u32)((mpidr & 0xffffff) | (((mpidr >> 32) & 0xff) << 24));
}
/* GICD_IROUTER layout equals MPIDR's affinity fields, IRM (bit 31) = 0. */
static inline u64 mpidr_to_irouter(u64 mpidr)
{
	return mpidr & 0xff00ffffffULL;
}

/*
 * Wait until *ctr >= target.  Fails only if the counter makes no progress
 * for `tmo` ticks, so slow nested emulation is tolerated while a real
 * loss still ends in a reported error instead of a hang.
 */
static int wait_ge(volatile u64 *ctr, u64 target, u64 tmo)
{
	u64 last = *ctr, t0 = cntvct();

	while (*ctr < target) {
		u64 cur = *ctr;
		if (cur != last) {
			last = cur;
			t0 = cntvct();
		} else if (cntvct() - t0 > tmo) {
			return -1;
		}
		asm volatile("yield" ::: "memory");
	}
	return 0;
}

/* ---- interrupt handling -------------------------------------------- */

/*
 * Called from the IRQ vector (VBAR_EL1 + 0x280) with IRQs masked.
 * One interrupt per entry: read IAR1 (acknowledge), account, EOIR1
 * (ICC_CTLR_EL1.EOImode = 0: priority drop + deactivate).
 */
void irq_handler(void)
{
	volatile struct tk_vcpu_area *me = &SH->v[read_sysreg(tpidr_el1)];
	u64 iar = read_sysreg(ICC_IAR1_EL1);
	u32 intid = iar & 0xffffff;

	/* 1020..1023 are special INTIDs: nothing to acknowledge, no EOI. */
	if (intid >= 1020 && intid <= TK_INTID_SPURIOUS) {
		me->spurious++;
		return;
	}

	if (intid < TK_NR_INTIDS) {
		me->acked[intid]++;
	} else {
		me->unexpected_intids++;
		me->last_unexpected_intid = intid;
	}

	if (intid == TK_INTID_VTIMER) {
		/*
		 * The vtimer is level-triggered: writing a new TVAL moves the
		 * compare value into the future, which drops the line before
		 * we EOI, so the same expiry cannot be taken twice.
		 */
		if (me->vtimer_armed < SH->count) {
			me->vtimer_armed++;
			write_sysreg(cntv_tval_el0, me->vtimer_period_ticks);
		} else {
			write_sysreg(cntv_ctl_el0, 0);	/* ENABLE = 0 */
		}
		isb();
	} else if (intid == TK_INTID_PTIMER) {
		/* One-shot WFI wake-up: disable, which drops the line. */
		write_sysreg(cntp_ctl_el0, 0);
		isb();
	}

	write_sysreg(ICC_EOIR1_EL1, iar);
	isb();
}

/* Any other exception: record syndrome, tell the VMM, stop. */
void unexpected_exception(u64 kind)
{
	volatile struct tk_vcpu_area *me = &SH->v[read_sysreg(tpidr_el1) % TK_MAX_VCPUS];

	me->exc_kind = kind;
	me->exc_esr = read_sysreg(esr_el1);
	me->exc_elr = read_sysreg(elr_el1);
	me->exc_far = read_sysreg(far_el1);
	mmio_w32(TK_MMIO_PANIC, (u32)kind);
	for (;;)
		asm volatile("wfi");
}

/* ---- GIC setup ------------------------------------------------------ */

/* Find our redistributor, enable our PPIs/SGIs, enable the CPU interface. */
static void gic_cpu_init(volatile struct tk_vcpu_area *me, u64 mpidr)
{
	u32 aff = mpidr_to_typer_aff(mpidr);
	u64 rd = 0;

	/*
	 * KVM lays the redistributors out contiguously (0x20000 each) in
	 * vcpu_id order, but rather than assume it we match GICR_TYPER's
	 * affinity against our MPIDR, stopping at the Last bit so we never
	 * touch an unbacked IPA.
	 */
	for (u64 i = 0; i < TK_MAX_VCPUS; i++) {
		u64 base = TK_GICR_BASE + i * TK_GICR_STRIDE;
		u32 lo = gic_r32(me, base + GICR_TYPER);
		u32 hi = gic_r32(me, base + GICR_TYPER + 4);

		if (hi == aff) {
			rd = base;
			me->redist_index = i;
			break;
		}
		if (lo & GICR_TYPER_LAST)
			break;
	}
	if (!rd) {
		me->errors |= TK_E_NO_REDIST;
		return;
	}

	/* SGI 1 (IPI), PPI 27 (vtimer), PPI 30 (ptimer).  KVM's vGICv3 puts
	 * all interrupts in group 1 with priority 0 by default. */
	gic_w32(me, rd + TK_GICR_SGI_OFF + GICR_ISENABLER0,
		 (1u << TK_INTID_SGI) | (1u << TK_INTID_VTIMER) |
		 (1u << TK_INTID_PTIMER));

	/* System register interface (RAO/WI under KVM, but be explicit). */
	write_sysreg(ICC_SRE_EL1, read_sysreg(ICC_SRE_EL1) | 1);
	isb();
	write_sysreg(ICC_PMR_EL1, 0xff);	/* let every priority through */
	write_sysreg(ICC_IGRPEN1_EL1, 1);	/* enable group 1 */
	isb();
}

/*
 * vCPU0 only, after every vCPU published its MPIDR.  Both SPIs are made
 * edge-triggered: KVM's irqfd injects "level 1 then level 0" and our
 * KVM_IRQ_LINE does the same, so with the default level configuration an
 * SPI could be withdrawn before the guest takes it.  As edge, the rising
 * edge latches the pending state until the guest acknowledges it.
 */
static void gic_dist_init(volatile struct tk_vcpu_area *me, u64 nv)
{
	u64 d = TK_GICD_BASE;
	u32 cfg;

	/* GICD_ICFGR2 covers INTIDs 32..47, 2 bits each, bit 1 = edge. */
	cfg = gic_r32(me, d + GICD_ICFGR + 4 * (TK_INTID_IRQFD / 16));
	cfg |= 2u << (2 * (TK_INTID_IRQFD % 16));
	cfg |= 2u << (2 * (TK_INTID_IRQLINE % 16));
	gic_w32(me, d + GICD_ICFGR + 4 * (TK_INTID_IRQFD / 16), cfg);

	/* Route irqfd SPI to the last vCPU, irqline SPI to vCPU0. */
	gic_w64(me, d + GICD_IROUTER + 8 * TK_INTID_IRQFD,
		 mpidr_to_irouter(SH->v[nv - 1].mpidr));
	gic_w64(me, d + GICD_IROUTER + 8 * TK_INTID_IRQLINE,
		 mpidr_to_irouter(SH->v[0].mpidr));

	/* GICD_ISENABLER1: INTIDs 32..63. */
	gic_w32(me, d + GICD_ISENABLER + 4,
		 (1u << (TK_INTID_IRQFD - 32)) | (1u << (TK_INTID_IRQLINE - 32)));

	/* ARE_NS (bit 4, RAO in KVM) | EnableGrp1NS (bit 1). */
	gic_w32(me, d + GICD_CTLR, 0x12);
}

/* ---- exception generators ------------------------------------------ */

static void do_hvc(volatile struct tk_vcpu_area *me)
{
	register u64 x0 asm("x0") = TK_HVC_FUNC;

	me->hvc_issued++;
	/* SMCCC: x0-x3 may be overwritten by the call. */
	asm volatile("hvc #0" : "+r"(x0) :: "x1", "x2", "x3", "memory");
	me->hvc_observed++;
	if (x0 != (u64)-1)		/* SMCCC_RET_NOT_SUPPORTED */
		me->errors |= TK_E_HVC_RET;
}

/*
 * WFI that is guaranteed to return, and that really blocks (and therefore
 * traps to KVM, which keeps HCR_EL2.TWI set without GICv4): an
 * implementation may - and QEMU TCG does - complete WFI without trapping
 * when an interrupt is already pending.  So:
 *  1. mask IRQs and drain everything already pending (briefly unmasking
 *     lets the handler take it), using ISR_EL1.I to see pending IRQs;
 *  2. arm the EL1 *physical* timer (PPI 30) wfi_period_us (1 ms) ahead (long
 *     enough not to expire before the WFI even under nested TCG);
 *  3. WFI.  A pending interrupt wakes WFI even while PSTATE.I masks it;
 *  4. unmask: the handler takes PPI 30 and disables the timer; wait for
 *     that ack so wake-ups never coalesce.
 * The physical timer keeps the vtimer free for the timer stream (mixed).
 * If an IRQ is pending anyway right before the WFI (another source fired
 * in the few instructions since the drain), the WFI may not trap: that is
 * counted in wfi_nonblocking so a tracer can account for it.
 */
#define ISR_EL1_I (1u << 7)

static void do_wfi(volatile struct tk_vcpu_area *me, u64 ticks, u64 tmo)
{
	u64 target;

	irq_disable();
	isb();
	for (int i = 0; i < 1000 && (read_sysreg(isr_el1) & ISR_EL1_I); i++) {
		irq_enable();		/* let the handler take it */
		isb();
		irq_disable();
		isb();
	}
	target = me->acked[TK_INTID_PTIMER] + 1;
	me->ptimer_armed++;
	write_sysreg(cntp_tval_el0, ticks);
	write_sysreg(cntp_ctl_el0, 1);		/* ENABLE, not IMASKed */
	isb();
	me->wfi_issued++;
	if (read_sysreg(isr_el1) & ISR_EL1_I)
		me->wfi_nonblocking++;
	asm volatile("dsb sy\n\twfi" ::: "memory");
	me->wfi_observed++;
	irq_enable();
	isb();
	if (wait_ge(&me->acked[TK_INTID_PTIMER], target, tmo))
		me->errors |= TK_E_WFI_TIMEOUT;
}

static void do_mmio(volatile struct tk_vcpu_area *me, u64 i)
{
	me->mmio_issued++;
	mmio_w32(TK_MMIO_TEST, (u32)i);	/* KVM_EXIT_MMIO, counted by VMM */
}

static void do_sysreg(volatile struct tk_vcpu_area *me)
{
	u64 v;

	me->sysreg_issued++;
	/* Trapped to EL2 by HCR_EL2.TID3 (EC 0x18), emulated by KVM. */
	asm volatile("mrs %0, id_aa64pfr0_el1" : "=r"(v) :: "memory");
	me->sysreg_observed++;
	if ((v & 0xf) == 0)		/* EL0 field must be 1 or 2 */
		me->errors |= TK_E_SYSREG_VAL;
}

/* ---- main ------------------------------------------------------------ */

void payload_main(u64 idx)
{
	volatile struct tk_vcpu_area *me = &SH->v[idx];
	u64 f = SH->features, n = SH->count, nv = SH->nvcpus;
	u64 frq = read_sysreg(cntfrq_el0);
	u64 tmo = frq * SH->timeout_s;
	u64 mpidr = read_sysreg(mpidr_el1);
	u64 wfi_ticks = frq * SH->wfi_period_us / 1000000;

	me->cntvct_start = cntvct();
	me->vtimer_period_ticks = frq * SH->timer_period_us / 1000000;
	if (!me->vtimer_period_ticks)
		me->vtimer_period_ticks = 1;
	if (!wfi_ticks)
		wfi_ticks = 1;
	if (idx == 0)
		SH->cntfrq = frq;
	me->mpidr = mpidr;

	gic_cpu_init(me, mpidr);
	me->ready = 1;

	/* Rendezvous: vCPU0 needs every MPIDR for IROUTER, everybody needs
	 * the distributor enabled before interrupts can flow. */
	if (idx == 0) {
		for (u64 i = 0; i < nv; i++)
			if (wait_ge(&SH->v[i].ready, 1, tmo))
				me->errors |= TK_E_READY_TIMEOUT;
		gic_dist_init(me, nv);
		SH->gic_ready = 1;
	} else if (wait_ge(&SH->gic_ready, 1, tmo)) {
		me->errors |= TK_E_READY_TIMEOUT;
	}

	irq_enable();
	isb();

	if (f & TK_F_TIMER) {
		/* First arm here, then re-armed by the handler until N. */
		me->vtimer_armed = 1;
		write_sysreg(cntv_tval_el0, me->vtimer_period_ticks);
		write_sysreg(cntv_ctl_el0, 1);
		isb();
	}

	/* Senders: interleave IPIs and exceptions so mixed really mixes. */
	for (u64 i = 0; i < n; i++) {
		if ((f & TK_F_IPI) && idx == 0 && nv >= 2) {
			u64 t = SH->v[1].mpidr;
			/* ICC_SGI1R_EL1: Aff3[55:48] Aff2[39:32] INTID[27:24]
			 * Aff1[23:16] TargetList[15:0] (bit = Aff0, RS = 0). */
			u64 sgi = (((t >> 32) & 0xff) << 48) |
				  (((t >> 16) & 0xff) << 32) |
				  ((u64)TK_INTID_SGI << 24) |
				  (((t >> 8) & 0xff) << 16) |
				  (1ULL << (t & 0xf));
			me->sgi_sent++;
			write_sysreg(ICC_SGI1R_EL1, sgi);
			isb();
			/* Don't send the next one before the target acked. */
			if (wait_ge(&SH->v[1].acked[TK_INTID_SGI], i + 1, tmo)) {
				me->errors |= TK_E_SGI_TIMEOUT;
				f &= ~TK_F_IPI;
			}
		}
		if (f & TK_F_EXC) {
			do_hvc(me);
			do_wfi(me, wfi_ticks, tmo);
			do_mmio(me, i);
			do_sysreg(me);
		}
	}

	/* Receivers: wait until everything addressed to us was acked. */
	if ((f & TK_F_TIMER) &&
	    wait_ge(&me->acked[TK_INTID_VTIMER], n, tmo))
		me->errors |= TK_E_VTIMER_TIMEOUT;
	if ((f & TK_F_IRQFD) && idx == nv - 1 &&
	    wait_ge(&me->acked[TK_INTID_IRQFD], n, tmo))
		me->errors |= TK_E_RX_TIMEOUT;
	if ((f & TK_F_IRQLINE) && idx == 0 &&
	    wait_ge(&me->acked[TK_INTID_IRQLINE], n, tmo))
		me->errors |= TK_E_RX_TIMEOUT;
	if ((f & TK_F_IPI) && idx == 1 &&
	    wait_ge(&me->acked[TK_INTID_SGI], n, tmo))
		me->errors |= TK_E_RX_TIMEOUT;

	irq_disable();
	write_sysreg(cntv_ctl_el0, 0);
	write_sysreg(cntp_ctl_el0, 0);
	isb();
	me->cntvct_end = cntvct();
	me->done = 1;
	mmio_w32(TK_MMIO_DONE, (u32)idx);	/* VMM stops running us */
	for (;;)
		asm volatile("wfi");
}
