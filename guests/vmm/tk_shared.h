/* SPDX-License-Identifier: MIT */
/*
 * tk_shared.h - guest physical memory map and the shared "ground truth"
 * area used by both tk-vmm (L1 userspace) and the bare-metal L2 payload.
 *
 * Both sides are compiled by the same aarch64 compiler, so the struct
 * layout is identical.  The area lives in ordinary guest RAM: the payload
 * writes it with plain stores (MMU off), the VMM reads it through its
 * mmap() of the same memory.  Every field has exactly one writer, so no
 * atomics are needed (exclusives/atomics on Device memory - which is what
 * all data accesses are with the MMU off - are not guaranteed to work).
 *
 * Coherency caveat: with the guest MMU off its accesses are non-cacheable.
 * On real hardware without FEAT_S2FWB the VMM's cacheable view could be
 * stale; under QEMU TCG (our L0) there are no caches, so this is fine.
 */
#ifndef TK_SHARED_H
#define TK_SHARED_H

/* Constants are shared with assembly, which does not accept a ULL suffix. */
#ifdef __ASSEMBLER__
#define TK_U(x) x
#else
#include <stdint.h>
#define TK_U(x) x##ULL
#endif

/* ---- Guest physical (IPA) memory map ------------------------------- */
#define TK_RAM_BASE        TK_U(0x40000000)   /* payload is linked here      */
#define TK_RAM_SIZE        TK_U(0x00400000)   /* 4 MiB of RAM                */
#define TK_PAYLOAD_MAX     TK_U(0x00100000)   /* payload image must fit 1 MiB */
#define TK_STACK_BASE      TK_U(0x40100000)   /* vCPU i: sp = base+(i+1)*size */
#define TK_STACK_SIZE      TK_U(0x4000)
#define TK_SHARED_BASE     TK_U(0x40200000)   /* struct tk_shared            */

/* GICv3 frames (same addresses as QEMU's virt board). */
#define TK_GICD_BASE       TK_U(0x08000000)
#define TK_GICR_BASE       TK_U(0x080A0000)
#define TK_GICR_STRIDE     TK_U(0x20000)      /* RD_base + SGI_base frames   */
#define TK_GICR_SGI_OFF    TK_U(0x10000)

/* Unbacked IPAs: every access exits to the VMM as KVM_EXIT_MMIO. */
#define TK_MMIO_TEST       TK_U(0x0a000000)   /* "mmio" exception kind        */
#define TK_MMIO_DONE       TK_U(0x0a000100)   /* doorbell: vCPU finished      */
#define TK_MMIO_PANIC      TK_U(0x0a000200)   /* doorbell: unexpected exception */

#define TK_MAX_VCPUS       8
#define TK_NR_INTIDS       64              /* per-INTID ack counters 0..63 */

/* ---- Interrupts used ------------------------------------------------ */
#define TK_INTID_SGI       1    /* IPI vCPU0 -> vCPU1                     */
#define TK_INTID_VTIMER    27   /* EL1 virtual timer PPI (KVM default)    */
#define TK_INTID_PTIMER    30   /* EL1 physical timer PPI, WFI wake-up    */
#define TK_IRQFD_GSI       8    /* KVM default routing: SPI = 32 + gsi    */
#define TK_INTID_IRQFD     (32 + TK_IRQFD_GSI)   /* 40 */
#define TK_INTID_IRQLINE   41
#define TK_INTID_SPURIOUS  1023

/* SMCCC fast call, owner 6 (standard hypervisor), no such function:
 * KVM answers SMCCC_RET_NOT_SUPPORTED (-1) in-kernel, no userspace exit. */
#define TK_HVC_FUNC        TK_U(0x8600ff00)

/* ---- Scenario feature bits (tk_shared.features) --------------------- */
#define TK_F_TIMER    (1u << 0)
#define TK_F_IRQFD    (1u << 1)
#define TK_F_IRQLINE  (1u << 2)
#define TK_F_IPI      (1u << 3)
#define TK_F_EXC      (1u << 4)

/* ---- Payload-detected error bits (tk_vcpu_area.errors) -------------- */
#define TK_E_NO_REDIST      (1u << 0)  /* no GICR_TYPER matched our MPIDR   */
#define TK_E_READY_TIMEOUT  (1u << 1)  /* other vCPUs / GIC never ready     */
#define TK_E_SGI_TIMEOUT    (1u << 2)  /* SGI not acked by target in time   */
#define TK_E_WFI_TIMEOUT    (1u << 3)  /* WFI wake-up ptimer IRQ never came */
#define TK_E_VTIMER_TIMEOUT (1u << 4)  /* vtimer stopped firing before N    */
#define TK_E_RX_TIMEOUT     (1u << 5)  /* irqfd/irqline/SGI receive stalled */
#define TK_E_HVC_RET        (1u << 6)  /* HVC returned something != -1      */
#define TK_E_SYSREG_VAL     (1u << 7)  /* ID_AA64PFR0_EL1 read looked bogus */

#define TK_MAGIC TK_U(0x544b564d4d303031) /* "TKVMM001" */

#ifndef __ASSEMBLER__
struct tk_vcpu_area {
	/* written by the payload (this vCPU only) */
	uint64_t mpidr;
	uint64_t ready;            /* CPU interface + redistributor set up */
	uint64_t done;
	uint64_t errors;           /* TK_E_* */
	uint64_t redist_index;
	uint64_t spurious;         /* INTID 1020..1023 read from IAR       */
	uint64_t unexpected_intids;/* INTIDs >= TK_NR_INTIDS               */
	uint64_t last_unexpected_intid;
	uint64_t vtimer_period_ticks;
	uint64_t vtimer_armed;     /* "sent" for PPI 27                    */
	uint64_t ptimer_armed;     /* "sent" for PPI 30 (WFI wake-ups)     */
	uint64_t sgi_sent;         /* "sent" for SGI 1 (sender = vCPU0)    */
	uint64_t hvc_issued, hvc_observed;
	uint64_t wfi_issued, wfi_observed;
	uint64_t wfi_nonblocking;  /* WFIs issued with an IRQ already pending */
	uint64_t mmio_issued;      /* observed is counted by the VMM       */
	uint64_t sysreg_issued, sysreg_observed;
	uint64_t cntvct_start, cntvct_end;
	uint64_t gic_mmio;         /* vGIC register accesses (trap to KVM, */
				   /* emulated in-kernel; setup only)      */
	uint64_t exc_kind, exc_esr, exc_elr, exc_far; /* unexpected exception */
	uint64_t acked[TK_NR_INTIDS];  /* per-INTID acks, from IRQ handler */
} __attribute__((aligned(256)));

struct tk_shared {
	/* written by the VMM before the vCPUs start */
	uint64_t magic;
	uint64_t features;         /* TK_F_* */
	uint64_t count;            /* N */
	uint64_t nvcpus;
	uint64_t timer_period_us;  /* vtimer re-arm period                */
	uint64_t wfi_period_us;    /* ptimer TVAL used to wake up WFI     */
	uint64_t timeout_s;        /* payload "no progress" timeout        */
	/* written by the payload */
	uint64_t cntfrq;           /* vCPU0's CNTFRQ_EL0                   */
	uint64_t gic_ready;        /* vCPU0 finished distributor setup     */
	uint64_t pad[7];
	struct tk_vcpu_area v[TK_MAX_VCPUS];
};
#endif /* !__ASSEMBLER__ */

#endif
