/*
 * tk_timebase: a QEMU TCG plugin that timestamps tracekit's probe points on the
 * instruction-count timeline, without ever stopping the guest.
 *
 * Why: under -icount shift=0 one guest nanosecond is one executed instruction, and a
 * debugger stop freezes that clock, so "instructions executed so far (all vCPUs)" is a
 * timeline debugger overhead cannot stretch (docs/timebase.md). The plugin API of QEMU
 * 7.2 (version 1) cannot read registers, so values come from GDB there; this plugin says
 * *when* each probe PC executed and *when* each GIC system register was accessed. Built
 * for API 4 (QEMU >= 9.2) it can also read a probe's values itself (TKV, record
 * --plugin-values), so those probes need no debugger stop.
 *
 * Output, through QEMU's log (-d plugin -D FILE), interleaved in execution order with
 * QEMU's own trace events (the log backend writes to the same file):
 *   TKP <vcpu> <pc-hex> <t>   a probe PC executed on <vcpu> at instruction count <t>
 *   TKS <vcpu> <t>            a GIC CPU-interface sysreg access (op0=3, CRn=12: ICC_*,
 *                             ICV_*, ICH_*) is about to execute; the trace event it may
 *                             raise (gicv3_ich_lr_write, gicv3_icv_iar_read, ...) follows
 *   TKM <vcpu> <pc-hex> <vaddr-hex>
 *                             the memory access of the instruction at <pc> (an "m" site)
 *                             touched <vaddr>: the recorder knows which register it was
 *                             based on and at what offset, so this recovers a pointer
 *                             argument without stopping (probes/pointer.py)
 *   TKV <vcpu> <pc-hex> <t> <name>=<hex> ...
 *                             (API 4 only) the captures of the probe whose TKP line comes
 *                             right before it (same vCPU, PC and count; both lines are one
 *                             qemu_plugin_outs call, so nothing comes between them), read
 *                             by the plugin as the instruction at <pc> is about to execute:
 *                             <hex> is the value as GDB's (unsigned long)(EXPR) gives it;
 *                             "?" marks an address that did not translate (never 0), "?r"
 *                             a register this QEMU does not name (see run_capture)
 *   TKW <n>                   (API 4 only, at exit) how many of the lines above named the
 *                             vCPU from the callback's index because the running vCPU
 *                             could not be determined (see running_vcpu); 0 when every
 *                             line names the vCPU that ran the instruction
 *   TKH <vcpu> <t> <vbar-hex> <delta-hex> <stale>
 *                             (API 4, nVHE) the hyp probes ("k" lines) moved to their EL2
 *                             addresses: VBAR_EL2 read in the host, the delta every
 *                             __kvm_nvhe_ symbol moves by, and how many probe PCs lay in a
 *                             block translated before (0 expected; see relocate_hyp);
 *                             "TKH <vcpu> <t> <vbar-hex> bad" when VBAR_EL2 was not the
 *                             host vector (no probe moved)
 *   TKE <t>                   QEMU is exiting
 *
 * Arguments: probes=FILE: one hex PC per line (a probe), or "m <hex PC>" (a memory site),
 * or (API 4; ignored by API 1) "c <hex PC> <name> <reg> <n> <off1> .. <offn> <off> <size>":
 * a capture program for the probe at PC (tracekit/probes/program.py compiles capture
 * expressions to them): start from register <reg> (as QEMU's gdbstub names it: x0..x30,
 * sp, cpsr, HCR_EL2, ...; w0..w30 the x register's low 32 bits; pc the instruction's own
 * address), for each of the <n> loads add its offset and read 8 bytes there, then add
 * <off> and read <size> bytes (1, 2, 4, 8; -4 sign-extends 4 bytes; 0 keeps the value).
 * A probe with captures is instrumented with QEMU_PLUGIN_CB_R_REGS and prints TKV.
 * (API 4, nVHE) "h <hex KVA>": the kernel VA of the nVHE host vector
 * (__kvm_nvhe___kvm_hyp_host_vector), and "k <hex KVA>": a hyp probe at its kernel VA,
 * stamped at KVA + delta once the plugin has learnt the delta itself (relocate_hyp), so
 * an nVHE recording needs no debugger stop to place them either.
 * The file is read again whenever QEMU
 * flushes its translation cache (a GDB breakpoint insert does), so probes whose address
 * is only known at run time (nVHE hyp code at EL2 virtual addresses) can be added: write
 * the file, then make QEMU flush.
 *
 * Debian packages no qemu-plugin.h, so the few declarations used are restated below
 * from QEMU's include/qemu/qemu-plugin.h. One source serves two plugin API versions,
 * chosen at build time with -DTK_PLUGIN_API=N (tracekit/vm/plugin/__init__.py picks N
 * from the QEMU in use, configs/tools.toml [qemu_plugin_api]):
 *   1  QEMU 7.2 (Debian 12): per-block counting by an inline add.
 *   4  QEMU 10.0 (Debian 13, bookworm-backports; accepts 2..4): the inline add without
 *      a per-vCPU scoreboard is gone (removed in API 2, QEMU 9.0), and
 *      qemu_plugin_insn_data copies into a buffer (API 3, QEMU 9.1). Blocks are counted
 *      by a per-block execution callback instead (see on_block). The vCPU index QEMU
 *      passes to callbacks is not the running vCPU's under -icount (see running_vcpu).
 *      Registers and guest memory are readable (API 2 and 4), so a probe's captures can
 *      be read here without a debugger stop (TKV, run_capture).
 */
#if TK_PLUGIN_API == 4
#define _GNU_SOURCE /* RTLD_DEFAULT */
#include <dlfcn.h>
#endif
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef TK_PLUGIN_API
#error "build with -DTK_PLUGIN_API=1 (QEMU 7.2) or -DTK_PLUGIN_API=4 (QEMU 10.0)"
#elif TK_PLUGIN_API != 1 && TK_PLUGIN_API != 4
#error "TK_PLUGIN_API must be 1 or 4"
#endif

/* ---- QEMU plugin API declarations (identical in versions 1 and 4) ------------------ */
typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t {
    const char *target_name;
    struct { int min; int cur; } version;
    bool system_emulation;
    union { struct { int smp_vcpus; int max_vcpus; } system; };
} qemu_info_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
enum qemu_plugin_mem_rw { QEMU_PLUGIN_MEM_R = 1, QEMU_PLUGIN_MEM_W, QEMU_PLUGIN_MEM_RW };
typedef uint32_t qemu_plugin_meminfo_t;
typedef void (*qemu_plugin_vcpu_mem_cb_t)(unsigned int vcpu_index, qemu_plugin_meminfo_t info,
                                          uint64_t vaddr, void *userdata);
void qemu_plugin_register_vcpu_mem_cb(struct qemu_plugin_insn *insn, qemu_plugin_vcpu_mem_cb_t cb,
                                      enum qemu_plugin_cb_flags flags,
                                      enum qemu_plugin_mem_rw rw, void *userdata);
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn,
                                            qemu_plugin_vcpu_udata_cb_t cb,
                                            enum qemu_plugin_cb_flags flags, void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
typedef void (*qemu_plugin_simple_cb_t)(qemu_plugin_id_t id);
void qemu_plugin_register_flush_cb(qemu_plugin_id_t id, qemu_plugin_simple_cb_t cb);
void qemu_plugin_outs(const char *string);

#if TK_PLUGIN_API == 1
/* ---- version 1 only (QEMU 7.2) ------------------------------------------------------ */
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op,
                                              void *ptr, uint64_t imm);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);
#else
/* ---- version 4 only (QEMU 10.0) ----------------------------------------------------- */
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb,
                                          qemu_plugin_vcpu_udata_cb_t cb,
                                          enum qemu_plugin_cb_flags flags, void *userdata);
size_t qemu_plugin_insn_data(const struct qemu_plugin_insn *insn, void *dest, size_t len);
typedef void (*qemu_plugin_vcpu_simple_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_index);
void qemu_plugin_register_vcpu_init_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_simple_cb_t cb);
struct qemu_plugin_register;
typedef struct {
    struct qemu_plugin_register *handle;
    const char *name;
    const char *feature;
} qemu_plugin_reg_descriptor;
/* The register API passes glib arrays; QEMU links glib, so these resolve from its copy
 * (struct layouts and prototypes from glib's garray.h). */
typedef struct { char *data; unsigned int len; } GArray;
typedef struct { uint8_t *data; unsigned int len; } GByteArray;
GByteArray *g_byte_array_new(void);
uint8_t *g_byte_array_free(GByteArray *array, int free_segment);
char *g_array_free(GArray *array, int free_segment);
GByteArray *g_byte_array_set_size(GByteArray *array, unsigned int length);
GArray *qemu_plugin_get_registers(void);
int qemu_plugin_read_register(struct qemu_plugin_register *handle, GByteArray *buf);
bool qemu_plugin_read_memory_vaddr(uint64_t addr, GByteArray *data, size_t len);
#endif

#define EXPORT __attribute__((visibility("default")))
EXPORT int qemu_plugin_version = TK_PLUGIN_API;

/* ---- state ------------------------------------------------------------------------- */
/* Instructions executed by all vCPUs. Under -icount TCG runs the vCPUs round-robin on
 * one thread, so a plain (non-atomic) counter is exact. */
static uint64_t insn_count;
static uint64_t *probes;
static size_t n_probes;
static uint64_t *mem_sites;
static size_t n_mem_sites;

#if TK_PLUGIN_API == 4
/* ---- capture programs (API 4) ------------------------------------------------------ */
/* Limits that keep one TKP + TKV pair in one fixed buffer: 48 captures of
 * "name=" + 16 hex digits with names of at most 31 characters (tracekit/record/stamps.py
 * refuses larger programs before QEMU starts). */
#define MAX_CAPTURES 48
#define MAX_NAME 32
#define MAX_LOADS 8
#define MAX_REGS 64
#define REG_PC (-1)

struct capture {
    uint64_t pc;
    char name[MAX_NAME];
    int reg;      /* index into reg_names, or REG_PC */
    bool mask32;  /* a w register */
    unsigned int n_loads;
    uint64_t loads[MAX_LOADS];
    uint64_t offset;
    int size;     /* 0, 1, 2, 4, 8; negative: sign-extend */
};

static struct capture *captures; /* sorted by pc, file order within a pc */

/* ---- nVHE hyp probes placed by the plugin (API 4) -----------------------------------
 * KVM's nVHE hyp code runs at EL2 virtual addresses chosen at every boot (the linear
 * alias of the code with a random tag: arch/arm64/kvm/va_layout.c), so its probes are
 * written as kernel VAs ("k") and moved by delta = VBAR_EL2 - KVA(host vector), read in
 * the host once KVM has installed its vectors (the first host execution of a probe with
 * captures: those run after the VMM created its VM, when VBAR_EL2 holds the host
 * vector while the host runs; hyp/nvhe/switch.c __deactivate_traps). This replaces the
 * debugger stop the recorder otherwise makes to read VBAR_EL2 (record/hyp.py).
 *
 * A block translated before the move keeps no stamp for a probe inside it: while the move
 * is pending, blocks in the lower VA range (bit 55 clear: EL2's single nVHE range, 48 or
 * 52 bits wide; also L1 user space) are remembered, and at the move every probe PC is checked against them. QEMU offers a
 * flush to plugins only through qemu_plugin_reset, which in 10.0 left its lock taken
 * (QEMU issue 2901, fixed after 10.0.0), so a stale probe is reported (TKH's <stale>)
 * and the recording refused, never silently missed. */
static uint64_t hyp_vector_kva;   /* 0: no "h" line */
static uint64_t *hyp_kvas;        /* "k" lines */
static size_t n_hyp_kvas;
static bool hyp_moved;
static bool hyp_given_up;         /* VBAR_EL2 was not the host vector */
static uint64_t hyp_delta;
struct range { uint64_t start, end; };
static struct range *early_blocks; /* low-VA blocks translated before the move */
static size_t n_early_blocks, cap_early_blocks;
static size_t n_captures;
/* Register names the programs use, interned for good (slots stay valid across reloads). */
static char reg_names[MAX_REGS][MAX_NAME];
static int n_reg_names;
#endif

/* Per instrumented instruction: its PC and how many instructions of its block come
 * after it (the block's count was already added, whole, at block entry). */
struct site {
    uint64_t pc;
    uint64_t after;
#if TK_PLUGIN_API == 4
    size_t n_caps;
    struct capture caps[]; /* copied at translation: a reload cannot pull them away */
#endif
};

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static bool is_probe(uint64_t pc)
{
    return n_probes && bsearch(&pc, probes, n_probes, sizeof(*probes), cmp_u64) != NULL;
}

static bool is_mem_site(uint64_t pc)
{
    return n_mem_sites &&
           bsearch(&pc, mem_sites, n_mem_sites, sizeof(*mem_sites), cmp_u64) != NULL;
}

/* MSR/MRS (register) with op0 == 3 and CRn == 12: the GIC CPU interface block of the
 * system register space (Arm ARM C5.2; ICC_SGI1R_EL1 is 3,0,12,11,5; ICH_LR<n>_EL2 is
 * 3,4,12,12|13,n; ICC_IAR1_EL1 3,0,12,12,0). Encoding: 1101010100 L 1 op0 op1 CRn CRm op2 Rt. */
static bool is_gic_sysreg(uint32_t insn)
{
    if ((insn & 0xffd00000u) != 0xd5100000u) {
        return false;
    }
    uint32_t op0 = 2 | ((insn >> 19) & 1);
    uint32_t crn = (insn >> 12) & 0xf;
    return op0 == 3 && crn == 12;
}

#if TK_PLUGIN_API == 1
/* QEMU 7.2 loads the vCPU index from the running CPUState when the callback runs. */
#define running_vcpu(vcpu) (vcpu)
#else
/* ---- which vCPU is running (API 4) --------------------------------------------------
 * QEMU 10.0's callbacks get the wrong vCPU index under -icount. Commit dbf408b6678a
 * ("plugins: optimize cpu_index code generation", first in 10.0) makes gen_cpu_index()
 * in accel/tcg/plugin-gen.c emit current_cpu->cpu_index as a translation-time constant
 * whenever the block's cflags lack CF_PARALLEL, assuming that means one vCPU. With
 * -icount (and -accel tcg,thread=single) all vCPUs run round-robin on one thread, so
 * CF_PARALLEL is clear even with -smp 2, and a translated block is shared by every vCPU
 * that runs the same code: each callback reports the vCPU that *translated* the block.
 * Measured here: a TKS line and the GIC trace event of the same instruction (which names
 * the CPU QEMU ran) agreed in 650 of 892 cases (QEMU 7.2: 872 of 872).
 *
 * What identifies the running vCPU instead (QEMU 10.0.2, -cpu max, Linux 6.1 in L1):
 *   - MPIDR_EL1 is not among qemu_plugin_get_registers(): QEMU defines it ARM_CP_NO_RAW
 *     and arm_register_sysreg_for_feature() (target/arm/gdbstub.c) leaves those out.
 *   - VMPIDR_EL2 is the only listed register whose reset value differs per CPU (it is
 *     MPIDR), but L1 KVM writes the L2 vCPU's MPIDR into it (VHE at vcpu load, nVHE at
 *     each guest entry), and L2's vCPUs 0 and 1 have the same values as L1's CPUs 0 and 1.
 *   - TPIDR_EL2 (VHE host per-cpu offset, nVHE hyp per-cpu base) is 0 on every CPU until
 *     the kernel (VHE) or KVM's hyp init (nVHE) sets it, and its values would need a
 *     learned value -> index table; guest memory reads (qemu_plugin_read_memory_vaddr)
 *     translate through the running regime: L2's stage 1 while L2 runs, hyp VAs in nVHE.
 *   - QEMU's own `current_cpu` (a thread-local CPUState pointer; the variable the runtime
 *     register API reads, qemu_plugin_read_register()) names the running vCPU exactly in
 *     every context (L1 host, EL2 hyp, L2 guest; VHE or nVHE) and no guest can change
 *     it. QEMU is linked with its symbols exported (Debian's builds use modules; 7.2 and
 *     10.0 both export current_cpu), so dlsym() finds it without linking against it.
 *     on_vcpu_init records its value for each vCPU index (vCPU init work runs with
 *     current_cpu set to that vCPU: checked there against VMPIDR_EL2's reset value);
 *     running_vcpu looks the running value up. Only the pointer value is used, never
 *     CPUState's layout.
 * If the running vCPU cannot be determined (current_cpu not exported, or a value seen at
 * no vCPU init), the callback's index is used and counted: TKW <n> at exit. */
static void **vcpu_state; /* [vCPU index] = its CPUState (current_cpu while it runs) */
static unsigned int n_vcpu_state;
static bool vcpu_state_bad; /* the vCPU init values were inconsistent: trust none */
static uint64_t n_unresolved;
static __thread void *const *current_cpu_slot;
static __thread bool current_cpu_looked_up;

/* QEMU's current_cpu in this thread (a TLS variable: dlsym gives this thread's copy). */
static void *current_cpu_state(void)
{
    if (!current_cpu_looked_up) {
        current_cpu_looked_up = true;
        current_cpu_slot = dlsym(RTLD_DEFAULT, "current_cpu");
    }
    return current_cpu_slot ? *current_cpu_slot : NULL;
}

/* VMPIDR_EL2 of the current vCPU, which at vCPU init is its reset value MPIDR; false
 * when this QEMU does not list or read it. */
static bool read_vmpidr(uint64_t *value)
{
    GArray *regs = qemu_plugin_get_registers();
    if (!regs) {
        return false;
    }
    const qemu_plugin_reg_descriptor *d = (const qemu_plugin_reg_descriptor *)regs->data;
    bool ok = false;
    for (unsigned int i = 0; i < regs->len; i++) {
        if (d[i].name && strcmp(d[i].name, "VMPIDR_EL2") == 0) {
            GByteArray *buf = g_byte_array_new();
            int n = qemu_plugin_read_register(d[i].handle, buf);
            if (n == 8 && buf->len >= 8) {
                memcpy(value, buf->data, 8); /* target (little-endian) byte order */
                ok = true;
            }
            g_byte_array_free(buf, 1);
            break;
        }
    }
    g_array_free(regs, 1);
    return ok;
}

static void on_vcpu_init(qemu_plugin_id_t id, unsigned int vcpu)
{
    (void)id;
    void *state = current_cpu_state();
    if (!state) {
        if (!vcpu_state_bad) {
            fprintf(stderr, "tk_timebase: QEMU's current_cpu is not available; vCPU numbers "
                            "fall back to the callback's index (TKW)\n");
        }
        vcpu_state_bad = true;
        return;
    }
    /* The virt board's MPIDR for CPU n with GICv3: Aff0 = n % 16, Aff1 = n / 16. */
    uint64_t mpidr;
    if (read_vmpidr(&mpidr) && (mpidr & 0xff) + 16 * ((mpidr >> 8) & 0xff) != vcpu) {
        fprintf(stderr, "tk_timebase: vCPU %u initialised with MPIDR 0x%" PRIx64 "\n", vcpu,
                mpidr);
        vcpu_state_bad = true;
    }
    for (unsigned int i = 0; i < n_vcpu_state; i++) {
        if (i != vcpu && vcpu_state[i] == state) {
            fprintf(stderr, "tk_timebase: vCPUs %u and %u share a CPUState\n", i, vcpu);
            vcpu_state_bad = true;
        }
    }
    if (vcpu >= n_vcpu_state) {
        void **grown = realloc(vcpu_state, (vcpu + 1) * sizeof(*grown));
        if (!grown) {
            vcpu_state_bad = true;
            return;
        }
        memset(grown + n_vcpu_state, 0, (vcpu + 1 - n_vcpu_state) * sizeof(*grown));
        vcpu_state = grown;
        n_vcpu_state = vcpu + 1;
    }
    vcpu_state[vcpu] = state;
}

/* The index of the vCPU executing this callback; `vcpu` (QEMU's argument) when unknown. */
static unsigned int running_vcpu(unsigned int vcpu)
{
    void *state = vcpu_state_bad ? NULL : current_cpu_state();
    if (state) {
        if (vcpu < n_vcpu_state && vcpu_state[vcpu] == state) {
            return vcpu;
        }
        for (unsigned int i = 0; i < n_vcpu_state; i++) {
            if (vcpu_state[i] == state) {
                return i;
            }
        }
    }
    __atomic_fetch_add(&n_unresolved, 1, __ATOMIC_RELAXED);
    return vcpu;
}
#endif

#if TK_PLUGIN_API == 4
/* ---- reading captures (API 4) -------------------------------------------------------
 * Register handles are looked up once per vCPU and name (qemu_plugin_get_registers
 * lists the current vCPU's registers: plugins/api.c); the reads go through the gdbstub
 * (qemu_plugin_read_register -> gdb_read_register on current_cpu, target byte order:
 * little-endian here, as on the x86 host) and through the vCPU's current translation
 * regime (qemu_plugin_read_memory_vaddr -> cpu_memory_rw_debug on current_cpu, false
 * when the address does not translate). Both act on current_cpu, the running vCPU, not
 * the (possibly stale) index QEMU passes the callback (running_vcpu). Register values
 * are those before the instruction executes: the callback is registered with
 * QEMU_PLUGIN_CB_R_REGS, so TCG syncs its globals to CPUState before the call
 * (accel/tcg/plugin-gen.c); "pc" is not read (inside a block it is the block's start,
 * not the instruction's) but taken from the instruction's own address. */
struct vcpu_regs {
    bool looked_up[MAX_REGS];
    struct qemu_plugin_register *handle[MAX_REGS]; /* NULL: this QEMU has no such name */
};
static struct vcpu_regs *vcpu_regs;
static unsigned int n_vcpu_regs;
static GByteArray *scratch;

static struct qemu_plugin_register *reg_handle(unsigned int vcpu, int slot)
{
    if (vcpu >= n_vcpu_regs) {
        struct vcpu_regs *grown = realloc(vcpu_regs, (vcpu + 1) * sizeof(*grown));
        if (!grown) {
            return NULL;
        }
        memset(grown + n_vcpu_regs, 0, (vcpu + 1 - n_vcpu_regs) * sizeof(*grown));
        vcpu_regs = grown;
        n_vcpu_regs = vcpu + 1;
    }
    struct vcpu_regs *r = &vcpu_regs[vcpu];
    if (!r->looked_up[slot]) {
        r->looked_up[slot] = true;
        GArray *regs = qemu_plugin_get_registers();
        if (regs) {
            const qemu_plugin_reg_descriptor *d = (const qemu_plugin_reg_descriptor *)regs->data;
            for (unsigned int i = 0; i < regs->len; i++) {
                if (d[i].name && strcmp(d[i].name, reg_names[slot]) == 0) {
                    r->handle[slot] = d[i].handle;
                    break;
                }
            }
            g_array_free(regs, 1);
        }
    }
    return r->handle[slot];
}

static bool read_reg(unsigned int vcpu, int slot, uint64_t *value)
{
    struct qemu_plugin_register *h = reg_handle(vcpu, slot);
    if (!h) {
        return false;
    }
    g_byte_array_set_size(scratch, 0); /* gdb_read_register appends */
    int n = qemu_plugin_read_register(h, scratch);
    if (n <= 0 || scratch->len < (unsigned int)n) {
        return false;
    }
    *value = 0;
    memcpy(value, scratch->data, n < 8 ? (size_t)n : 8);
    return true;
}

static bool read_mem(uint64_t addr, unsigned int size, uint64_t *value)
{
    if (!qemu_plugin_read_memory_vaddr(addr, scratch, size) || scratch->len < size) {
        return false;
    }
    *value = 0;
    memcpy(value, scratch->data, size);
    return true;
}

/* Append " name=<hex>" (or "=?" / "=?r") for one capture: CaptureProgram.evaluate in
 * tracekit/probes/program.py is the same computation in Python. */
static int run_capture(char *out, size_t room, const struct capture *c, unsigned int vcpu)
{
    uint64_t value;
    if (c->reg == REG_PC) {
        value = c->pc;
    } else if (!read_reg(vcpu, c->reg, &value)) {
        return snprintf(out, room, " %s=?r", c->name);
    }
    if (c->mask32) {
        value &= 0xffffffffu;
    }
    for (unsigned int i = 0; i < c->n_loads; i++) {
        if (!read_mem(value + c->loads[i], 8, &value)) {
            return snprintf(out, room, " %s=?", c->name);
        }
    }
    if (c->size != 0) {
        unsigned int size = (unsigned int)(c->size < 0 ? -c->size : c->size);
        if (!read_mem(value + c->offset, size, &value)) {
            return snprintf(out, room, " %s=?", c->name);
        }
        if (c->size < 0 && size < 8 && (value >> (8 * size - 1)) & 1) {
            value |= ~0ull << (8 * size);
        }
    }
    return snprintf(out, room, " %s=%" PRIx64, c->name, value);
}

static void relocate_hyp(unsigned int cpu, uint64_t t);

static void on_probe_values(unsigned int vcpu, void *udata)
{
    struct site *s = udata;
    unsigned int cpu = running_vcpu(vcpu);
    uint64_t t = insn_count - s->after;
    if (hyp_vector_kva && !hyp_moved && !hyp_given_up) {
        relocate_hyp(cpu, t);
    }
    char buf[MAX_CAPTURES * (MAX_NAME + 20) + 160];
    size_t len = (size_t)snprintf(buf, sizeof(buf),
                                  "TKP %u %" PRIx64 " %" PRIu64 "\nTKV %u %" PRIx64 " %" PRIu64,
                                  cpu, s->pc, t, cpu, s->pc, t);
    for (size_t i = 0; i < s->n_caps; i++) {
        size_t room = sizeof(buf) - len - 1; /* one byte for the newline */
        int n = run_capture(buf + len, room, &s->caps[i], cpu);
        if (n < 0 || (size_t)n >= room) {
            break; /* cannot happen within stamps.py's limits; never a torn value */
        }
        len += (size_t)n;
    }
    buf[len] = '\n';
    buf[len + 1] = '\0';
    qemu_plugin_outs(buf);
}

/* The captures of the probe at pc: [*first, *first + return value). */
static size_t captures_at(uint64_t pc, size_t *first)
{
    size_t lo = 0, hi = n_captures;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (captures[mid].pc < pc) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    size_t end = lo;
    while (end < n_captures && captures[end].pc == pc) {
        end++;
    }
    *first = lo;
    return end - lo;
}
#endif

static void on_probe(unsigned int vcpu, void *udata)
{
    struct site *s = udata;
    char buf[80];
    snprintf(buf, sizeof(buf), "TKP %u %" PRIx64 " %" PRIu64 "\n", running_vcpu(vcpu), s->pc,
             insn_count - s->after);
    qemu_plugin_outs(buf);
}

static void on_gic_sysreg(unsigned int vcpu, void *udata)
{
    struct site *s = udata;
    char buf[64];
    snprintf(buf, sizeof(buf), "TKS %u %" PRIu64 "\n", running_vcpu(vcpu),
             insn_count - s->after);
    qemu_plugin_outs(buf);
}

static void on_mem_site(unsigned int vcpu, qemu_plugin_meminfo_t info, uint64_t vaddr,
                        void *udata)
{
    (void)info;
    struct site *s = udata;
    char buf[80];
    snprintf(buf, sizeof(buf), "TKM %u %" PRIx64 " %" PRIx64 "\n", running_vcpu(vcpu), s->pc,
             vaddr);
    qemu_plugin_outs(buf);
}

#if TK_PLUGIN_API == 4
/* A block starts executing: add its length (udata). QEMU runs the block's callbacks
 * before those of its first instruction, so the stamps see the same count as with API
 * 1's inline add. Not the per-vCPU inline add (a scoreboard, the API's replacement):
 * with -icount shift=0 and 2 CPUs, QEMU 10.0.13's inline per-vCPU counting made the L1
 * guest oops ("Oops - BRK" after a warning in has_mismatched_cache_type) while this
 * callback did not; treated as a QEMU 10.0 bug to avoid. Under -icount the vCPUs run
 * round-robin on one thread, so the plain global counter stays exact. */
static void on_block(unsigned int vcpu, void *udata)
{
    (void)vcpu;
    insn_count += (uint64_t)(uintptr_t)udata;
}
#endif

#if TK_PLUGIN_API == 4
static void remember_early_block(struct qemu_plugin_tb *tb, size_t n);
#endif

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
#if TK_PLUGIN_API == 4
    if (hyp_vector_kva && !hyp_moved && n) {
        remember_early_block(tb, n);
    }
#endif
#if TK_PLUGIN_API == 1
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &insn_count, n);
#else
    qemu_plugin_register_vcpu_tb_exec_cb(tb, on_block, QEMU_PLUGIN_CB_NO_REGS,
                                         (void *)(uintptr_t)n);
#endif
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint64_t pc = qemu_plugin_insn_vaddr(insn);
        uint32_t word = 0;
        if (qemu_plugin_insn_size(insn) == 4) {
#if TK_PLUGIN_API == 1
            memcpy(&word, qemu_plugin_insn_data(insn), 4);
#else
            qemu_plugin_insn_data(insn, &word, sizeof(word));
#endif
        }
        bool probe = is_probe(pc), gic = is_gic_sysreg(word), mem = is_mem_site(pc);
        if (mem) {
            struct site *m = malloc(sizeof(*m));
            if (m) {
                m->pc = pc;
                m->after = n - i;
                qemu_plugin_register_vcpu_mem_cb(insn, on_mem_site, QEMU_PLUGIN_CB_NO_REGS,
                                                 QEMU_PLUGIN_MEM_RW, m);
            }
        }
        if (!probe && !gic) {
            continue;
        }
        /* Sites live as long as the translation; leaked on re-translation (bounded by
         * the number of re-translations of probed blocks). */
#if TK_PLUGIN_API == 4
        size_t first = 0;
        size_t n_caps = probe ? captures_at(pc, &first) : 0;
        struct site *s = malloc(sizeof(*s) + n_caps * sizeof(struct capture));
#else
        struct site *s = malloc(sizeof(*s));
#endif
        if (!s) {
            continue;
        }
        s->pc = pc;
        s->after = n - i;
#if TK_PLUGIN_API == 4
        s->n_caps = n_caps;
        if (n_caps) {
            memcpy(s->caps, captures + first, n_caps * sizeof(struct capture));
            /* R_REGS only where registers are read: it makes TCG sync its globals
             * before the call, which the plain probes do not need. */
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_probe_values,
                                                   QEMU_PLUGIN_CB_R_REGS, s);
            continue;
        }
#endif
        qemu_plugin_register_vcpu_insn_exec_cb(insn, probe ? on_probe : on_gic_sysreg,
                                               QEMU_PLUGIN_CB_NO_REGS, s);
    }
}

static void on_qemu_exit(qemu_plugin_id_t id, void *udata)
{
    (void)id;
    (void)udata;
    char buf[64];
#if TK_PLUGIN_API == 4
    snprintf(buf, sizeof(buf), "TKW %" PRIu64 "\n", n_unresolved);
    qemu_plugin_outs(buf);
#endif
    snprintf(buf, sizeof(buf), "TKE %" PRIu64 "\n", insn_count);
    qemu_plugin_outs(buf);
}

static char *probes_path;

static int load_probes(const char *path);

/* Translations are gone: re-read the probe list before anything is translated again. */
static void on_flush(qemu_plugin_id_t id)
{
    (void)id;
#if TK_PLUGIN_API == 4
    n_early_blocks = 0; /* those translations are gone: none can hide a probe now */
#endif
    if (probes_path) {
        load_probes(probes_path);
    }
}

/* Append pc to a growable sorted-later list; false when out of memory. */
static bool push_pc(uint64_t **list, size_t *n, size_t *cap, uint64_t pc)
{
    if (*n == *cap) {
        size_t grown_cap = *cap ? *cap * 2 : 64;
        uint64_t *grown = realloc(*list, grown_cap * sizeof(**list));
        if (!grown) {
            return false;
        }
        *list = grown;
        *cap = grown_cap;
    }
    (*list)[(*n)++] = pc;
    return true;
}

#if TK_PLUGIN_API == 4
/* While the hyp probes wait for their EL2 addresses: a block in the lower VA range was
 * translated (a block ends at the last instruction's end; none crosses a page). */
static void remember_early_block(struct qemu_plugin_tb *tb, size_t n)
{
    struct qemu_plugin_insn *last = qemu_plugin_tb_get_insn(tb, n - 1);
    uint64_t start = qemu_plugin_insn_vaddr(qemu_plugin_tb_get_insn(tb, 0));
    if ((start >> 55) & 1) {
        return; /* the upper range: the kernel's own (TTBR1) addresses, never hyp code */
    }
    if (n_early_blocks == cap_early_blocks) {
        size_t grown_cap = cap_early_blocks ? cap_early_blocks * 2 : 256;
        struct range *grown = realloc(early_blocks, grown_cap * sizeof(*grown));
        if (!grown) {
            hyp_given_up = true; /* cannot prove the move safe: say so (TKH bad) */
            return;
        }
        early_blocks = grown;
        cap_early_blocks = grown_cap;
    }
    early_blocks[n_early_blocks].start = start;
    early_blocks[n_early_blocks].end =
        qemu_plugin_insn_vaddr(last) + qemu_plugin_insn_size(last);
    n_early_blocks++;
}

static int slot_cpsr = -1, slot_hcr = -1, slot_vbar = -1;

/* In the host (EL1, HCR_EL2.VM clear: not a guest), with KVM's vectors installed,
 * VBAR_EL2 is the EL2 address of the host vector: move the "k" probes by the delta
 * (the computation record/hyp.py makes at a debugger stop). */
static void relocate_hyp(unsigned int cpu, uint64_t t)
{
    uint64_t cpsr, hcr, vbar;
    if (!read_reg(cpu, slot_cpsr, &cpsr) || !read_reg(cpu, slot_hcr, &hcr) ||
        !read_reg(cpu, slot_vbar, &vbar)) {
        return; /* "?r": the recorder finds no TKH line and refuses */
    }
    if (((cpsr >> 2) & 3) != 1 || (hcr & 1)) {
        return; /* a guest, or EL2 itself: not where VBAR_EL2 names the host vector */
    }
    char buf[128];
    /* nVHE EL2 has one (lower) VA range: 48 bits, or 52 with LPA2 (6.12 on QEMU 10). */
    if (hyp_given_up || vbar == 0 || (vbar & 0xfff) != (hyp_vector_kva & 0xfff) ||
        ((vbar >> 55) & 1)) {
        hyp_given_up = true;
        snprintf(buf, sizeof(buf), "TKH %u %" PRIu64 " %" PRIx64 " bad\n", cpu, t, vbar);
        qemu_plugin_outs(buf);
        return;
    }
    hyp_delta = vbar - hyp_vector_kva;
    size_t stale = 0, cap = n_probes;
    for (size_t i = 0; i < n_hyp_kvas; i++) {
        uint64_t pc = hyp_kvas[i] + hyp_delta;
        for (size_t b = 0; b < n_early_blocks; b++) {
            if (early_blocks[b].start <= pc && pc < early_blocks[b].end) {
                stale++;
                break;
            }
        }
        if (!push_pc(&probes, &n_probes, &cap, pc)) {
            hyp_given_up = true;
            return;
        }
    }
    qsort(probes, n_probes, sizeof(*probes), cmp_u64);
    hyp_moved = true;
    free(early_blocks);
    early_blocks = NULL;
    n_early_blocks = cap_early_blocks = 0;
    snprintf(buf, sizeof(buf), "TKH %u %" PRIu64 " %" PRIx64 " %" PRIx64 " %zu\n", cpu, t,
             vbar, hyp_delta, stale);
    qemu_plugin_outs(buf);
}

/* The slot of a register name, interned on first use; -1 when the table is full. */
static int reg_slot(const char *name)
{
    for (int i = 0; i < n_reg_names; i++) {
        if (strcmp(reg_names[i], name) == 0) {
            return i;
        }
    }
    if (n_reg_names == MAX_REGS) {
        return -1;
    }
    snprintf(reg_names[n_reg_names], MAX_NAME, "%s", name);
    return n_reg_names++;
}

/* One "c" line (after the "c "): false when malformed or beyond the limits. */
static bool parse_capture(const char *text, struct capture *c)
{
    char name[MAX_NAME], reg[MAX_NAME];
    int used = 0;
    unsigned int n_loads;
    memset(c, 0, sizeof(*c));
    if (sscanf(text, "%" SCNx64 " %31s %31s %u%n", &c->pc, name, reg, &n_loads, &used) != 4 ||
        n_loads > MAX_LOADS) {
        return false;
    }
    text += used;
    for (unsigned int i = 0; i < n_loads; i++) {
        if (sscanf(text, " %" SCNu64 "%n", &c->loads[i], &used) != 1) {
            return false;
        }
        text += used;
    }
    if (sscanf(text, " %" SCNu64 " %d", &c->offset, &c->size) != 2 ||
        !(c->size == 0 || c->size == 1 || c->size == 2 || c->size == 4 || c->size == 8 ||
          c->size == -1 || c->size == -2 || c->size == -4)) {
        return false;
    }
    c->n_loads = n_loads;
    snprintf(c->name, MAX_NAME, "%s", name);
    const char *regname = reg;
    char xreg[MAX_NAME];
    if (reg[0] == 'w' && reg[1] >= '0' && reg[1] <= '9') {
        c->mask32 = true; /* w<n>: the low half of x<n> (GDB names only x<n> here) */
        snprintf(xreg, sizeof(xreg), "x%s", reg + 1);
        regname = xreg;
    }
    c->reg = strcmp(regname, "pc") == 0 ? REG_PC : reg_slot(regname);
    return c->reg != -1 || strcmp(regname, "pc") == 0;
}

static int cmp_capture(const void *a, const void *b)
{
    const struct capture *x = a, *y = b;
    /* Order within a pc does not matter: TKV names every value. */
    return x->pc < y->pc ? -1 : x->pc > y->pc;
}
#endif

static int load_probes(const char *path)
{
    free(probes);
    free(mem_sites);
    probes = mem_sites = NULL;
    n_probes = n_mem_sites = 0;
    size_t cap_probes = 0, cap_sites = 0;
#if TK_PLUGIN_API == 4
    free(captures);
    captures = NULL;
    n_captures = 0;
    size_t cap_captures = 0;
    free(hyp_kvas);
    hyp_kvas = NULL;
    n_hyp_kvas = 0;
    size_t cap_hyp = 0;
#endif
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "tk_timebase: cannot open probes file %s\n", path);
        return -1;
    }
    char line[512];
    while (fgets(line, sizeof(line), f)) {
        if (line[0] == 'c' && line[1] == ' ') {
#if TK_PLUGIN_API == 4
            struct capture c;
            if (!parse_capture(line + 2, &c)) {
                fprintf(stderr, "tk_timebase: bad capture line: %s", line);
                continue;
            }
            if (n_captures == cap_captures) {
                size_t grown_cap = cap_captures ? cap_captures * 2 : 64;
                struct capture *grown = realloc(captures, grown_cap * sizeof(*grown));
                if (!grown) {
                    break;
                }
                captures = grown;
                cap_captures = grown_cap;
            }
            captures[n_captures++] = c;
#endif
            continue;
        }
        if ((line[0] == 'h' || line[0] == 'k') && line[1] == ' ') {
#if TK_PLUGIN_API == 4
            char *end;
            uint64_t kva = strtoull(line + 2, &end, 16);
            if (end == line + 2) {
                continue;
            }
            if (line[0] == 'h') {
                hyp_vector_kva = kva;
            } else if (!push_pc(&hyp_kvas, &n_hyp_kvas, &cap_hyp, kva) ||
                       (hyp_moved && !push_pc(&probes, &n_probes, &cap_probes, kva + hyp_delta))) {
                break;
            }
#endif
            continue;
        }
        bool site = line[0] == 'm' && line[1] == ' ';
        const char *text = site ? line + 2 : line;
        char *end;
        uint64_t pc = strtoull(text, &end, 16);
        if (end == text) {
            continue;
        }
        if (!(site ? push_pc(&mem_sites, &n_mem_sites, &cap_sites, pc)
                   : push_pc(&probes, &n_probes, &cap_probes, pc))) {
            break;
        }
    }
    fclose(f);
    if (probes) {
        qsort(probes, n_probes, sizeof(*probes), cmp_u64);
    }
    if (mem_sites) {
        qsort(mem_sites, n_mem_sites, sizeof(*mem_sites), cmp_u64);
    }
#if TK_PLUGIN_API == 4
    if (captures) {
        qsort(captures, n_captures, sizeof(*captures), cmp_capture);
    }
#endif
    return 0;
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc,
                               char **argv)
{
    if (!info->system_emulation) {
        fprintf(stderr, "tk_timebase: system emulation only\n");
        return -1;
    }
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "probes=", 7) == 0) {
            probes_path = argv[i] + 7; /* argv stays valid for the plugin's lifetime */
            if (load_probes(probes_path) != 0) {
                return -1;
            }
        }
    }
#if TK_PLUGIN_API == 4
    slot_cpsr = reg_slot("cpsr");
    slot_hcr = reg_slot("HCR_EL2");
    slot_vbar = reg_slot("VBAR_EL2");
    scratch = g_byte_array_new();
    qemu_plugin_register_vcpu_init_cb(id, on_vcpu_init);
#endif
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, on_qemu_exit, NULL);
    qemu_plugin_register_flush_cb(id, on_flush);
    return 0;
}
