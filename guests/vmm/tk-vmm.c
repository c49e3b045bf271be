/* SPDX-License-Identifier: MIT */
/*
 * tk-vmm - minimal arm64 KVM VMM that runs a bare-metal payload (L2) and
 * generates a known mix of interrupts and exceptions, then prints their
 * ground truth for tracekit.
 *
 *   tk-vmm --scenario {timer,irqfd,irqline,ipi,exceptions,mixed}
 *          [--count N] [--vcpus V] [--timeout SECONDS]
 *
 * stdout carries exactly two lines:
 *   TRACEKIT-SCENARIO-START {json}   (before the vCPUs start)
 *   TRACEKIT-GROUND-TRUTH {json}     (at the end, also on failure)
 * everything else goes to stderr.  Exit status: 0 ok, 1 mismatch/timeout/
 * unexpected exit, 2 bad arguments.
 *
 * KVM facts relied upon (Linux 6.1, arm64):
 *  - in-kernel vGICv3 (KVM_DEV_TYPE_ARM_VGIC_V3): distributor and
 *    redistributor base set with KVM_DEV_ARM_VGIC_GRP_ADDR before the
 *    vCPUs run; KVM_DEV_ARM_VGIC_CTRL_INIT once all vCPUs exist.
 *  - default GSI routing maps gsi g to SPI INTID 32 + g, so KVM_IRQFD on
 *    gsi 8 injects INTID 40.  irqfd injects "level 1 then 0", hence the
 *    payload configures the SPIs as edge-triggered.
 *  - KVM_IRQ_LINE irq field: type [27:24] (1 = SPI), number [15:0] = INTID.
 *  - vCPU MPIDR: Aff0 = vcpu_id & 0xf, Aff1 = vcpu_id >> 4 (we log it and
 *    the payload uses the real MPIDRs it reads itself for routing).
 *  - after KVM_ARM_VCPU_INIT a vCPU starts at EL1h, MMU off, DAIF masked.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <linux/kvm.h>

#include "tk_shared.h"

extern const unsigned char tk_payload_start[], tk_payload_end[];

#define DEFAULT_COUNT        20
#define DEFAULT_VCPUS        2
#define DEFAULT_TIMEOUT_S    300   /* whole run, wall clock            */
#define ACK_TIMEOUT_S        20    /* VMM waiting for one guest ack    */
#define PAYLOAD_TIMEOUT_S    30    /* guest "no progress" timeout      */
#define TIMER_PERIOD_US      50    /* vtimer re-arm period             */
#define WFI_PERIOD_US        1000  /* ptimer TVAL used to end each WFI */

/* ---- scenarios ------------------------------------------------------ */

struct scenario {
	const char *name;
	unsigned features;
	unsigned min_vcpus;
};

static const struct scenario scenarios[] = {
	{ "timer",      TK_F_TIMER,   1 },
	{ "irqfd",      TK_F_IRQFD,   2 },
	{ "irqline",    TK_F_IRQLINE, 1 },
	{ "ipi",        TK_F_IPI,     2 },
	{ "exceptions", TK_F_EXC,     1 },
	{ "mixed",      TK_F_TIMER | TK_F_IRQFD | TK_F_IRQLINE | TK_F_IPI |
			TK_F_EXC,     2 },
};

static const struct scenario *scn;
static unsigned count = DEFAULT_COUNT, nvcpus = DEFAULT_VCPUS;
static unsigned timeout_s = DEFAULT_TIMEOUT_S;

/* ---- VM state -------------------------------------------------------- */

struct vcpu {
	int idx;
	int fd;
	struct kvm_run *run;
	pthread_t thread;
	uint64_t mpidr;          /* from KVM_GET_ONE_REG, for the log */
	uint64_t mmio_exits;     /* writes to TK_MMIO_TEST ("observed") */
	int done;                /* rang the done doorbell */
	int failed;              /* stopped for any other reason */
};

static int kvm_fd = -1, vm_fd = -1, gic_fd = -1;
static uint8_t *ram;
static volatile struct tk_shared *sh;
static struct vcpu vcpus[TK_MAX_VCPUS];

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static unsigned nfinished;               /* vCPU threads that stopped */
static atomic_int stop;                  /* ask every thread to stop  */
static int64_t t_first_run = INT64_MAX;  /* CLOCK_MONOTONIC ns        */
static int64_t t_last_done;

/* Injector threads (VMM-side senders). */
struct injector {
	const char *name;        /* "irqfd" / "irqline" */
	unsigned intid;
	unsigned target;         /* vCPU index the SPI is routed to */
	int efd;                 /* eventfd for irqfd */
	pthread_t thread;
	int started;
	uint64_t sent;
};
static struct injector inj_irqfd = { .name = "irqfd", .intid = TK_INTID_IRQFD, .efd = -1 };
static struct injector inj_irqline = { .name = "irqline", .intid = TK_INTID_IRQLINE };

/* ---- errors ---------------------------------------------------------- */

#define MAX_ERRORS 64
static char *errors[MAX_ERRORS];
static unsigned nerrors, nerrors_dropped;

static void add_error(const char *fmt, ...)
{
	char buf[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	fprintf(stderr, "tk-vmm: error: %s\n", buf);
	pthread_mutex_lock(&lock);
	if (nerrors < MAX_ERRORS)
		errors[nerrors++] = strdup(buf);
	else
		nerrors_dropped++;
	pthread_mutex_unlock(&lock);
}

static void die(const char *what)
{
	fprintf(stderr, "tk-vmm: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void usage_error(const char *msg)
{
	fprintf(stderr, "tk-vmm: %s (usage: tk-vmm --scenario "
		"{timer,irqfd,irqline,ipi,exceptions,mixed} [--count N] "
		"[--vcpus V] [--timeout S])\n", msg);
	exit(2);
}

static unsigned parse_uint(const char *s, const char *opt, unsigned min,
			   unsigned max)
{
	char *end;
	unsigned long v;
	char msg[128];

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-' || v < min || v > max) {
		snprintf(msg, sizeof(msg), "%s must be an integer in [%u, %u]",
			 opt, min, max);
		usage_error(msg);
	}
	return (unsigned)v;
}

static void parse_args(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "scenario", required_argument, NULL, 's' },
		{ "count",    required_argument, NULL, 'n' },
		{ "vcpus",    required_argument, NULL, 'v' },
		{ "timeout",  required_argument, NULL, 't' },
		{ NULL, 0, NULL, 0 },
	};
	int c;
	char msg[128];

	opterr = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			scn = NULL;
			for (size_t i = 0; i < sizeof(scenarios) / sizeof(scenarios[0]); i++)
				if (!strcmp(optarg, scenarios[i].name))
					scn = &scenarios[i];
			if (!scn) {
				snprintf(msg, sizeof(msg), "unknown scenario '%.40s'", optarg);
				usage_error(msg);
			}
			break;
		case 'n':
			count = parse_uint(optarg, "--count", 1, 1000000);
			break;
		case 'v':
			nvcpus = parse_uint(optarg, "--vcpus", 1, TK_MAX_VCPUS);
			break;
		case 't':
			timeout_s = parse_uint(optarg, "--timeout", 1, 86400);
			break;
		default:
			usage_error("unknown option or missing argument");
		}
	}
	if (optind < argc)
		usage_error("unexpected positional argument");
	if (!scn)
		usage_error("--scenario is required");
	if (nvcpus < scn->min_vcpus) {
		snprintf(msg, sizeof(msg), "scenario %s needs --vcpus >= %u",
			 scn->name, scn->min_vcpus);
		usage_error(msg);
	}
}

/* ---- KVM setup ------------------------------------------------------- */

#define CORE_REG(x) (KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | \
		     KVM_REG_ARM_CORE_REG(x))
#define MPIDR_EL1_REG ARM64_SYS_REG(3, 0, 0, 0, 5)

static void set_one_reg(int fd, uint64_t id, uint64_t val)
{
	struct kvm_one_reg r = { .id = id, .addr = (uint64_t)(uintptr_t)&val };

	if (ioctl(fd, KVM_SET_ONE_REG, &r) < 0)
		die("KVM_SET_ONE_REG");
}

static uint64_t get_one_reg(int fd, uint64_t id)
{
	uint64_t val = 0;
	struct kvm_one_reg r = { .id = id, .addr = (uint64_t)(uintptr_t)&val };

	if (ioctl(fd, KVM_GET_ONE_REG, &r) < 0)
		die("KVM_GET_ONE_REG");
	return val;
}

static void vgic_attr(uint32_t group, uint64_t attr, void *addr)
{
	struct kvm_device_attr a = {
		.group = group, .attr = attr, .addr = (uint64_t)(uintptr_t)addr,
	};

	if (ioctl(gic_fd, KVM_SET_DEVICE_ATTR, &a) < 0)
		die("KVM_SET_DEVICE_ATTR (vgic)");
}

static void setup_vm(void)
{
	size_t psize = (size_t)(tk_payload_end - tk_payload_start);
	struct kvm_userspace_memory_region mr;
	struct kvm_create_device cd = { .type = KVM_DEV_TYPE_ARM_VGIC_V3 };
	struct kvm_vcpu_init init;
	uint64_t gicd = TK_GICD_BASE, gicr = TK_GICR_BASE;
	int run_size;

	kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm_fd < 0)
		die("open /dev/kvm");
	vm_fd = ioctl(kvm_fd, KVM_CREATE_VM, 0);
	if (vm_fd < 0)
		die("KVM_CREATE_VM");

	/* Guest RAM: zero-filled, so the payload's .bss and the shared
	 * area start out zeroed. */
	ram = mmap(NULL, TK_RAM_SIZE, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (ram == MAP_FAILED)
		die("mmap guest RAM");
	if (psize > TK_PAYLOAD_MAX) {
		fprintf(stderr, "tk-vmm: payload too large (%zu)\n", psize);
		exit(1);
	}
	memcpy(ram, tk_payload_start, psize);
	mr = (struct kvm_userspace_memory_region){
		.slot = 0, .guest_phys_addr = TK_RAM_BASE,
		.memory_size = TK_RAM_SIZE, .userspace_addr = (uintptr_t)ram,
	};
	if (ioctl(vm_fd, KVM_SET_USER_MEMORY_REGION, &mr) < 0)
		die("KVM_SET_USER_MEMORY_REGION");

	sh = (volatile struct tk_shared *)(ram + (TK_SHARED_BASE - TK_RAM_BASE));
	sh->features = scn->features;
	sh->count = count;
	sh->nvcpus = nvcpus;
	sh->timer_period_us = TIMER_PERIOD_US;
	sh->wfi_period_us = WFI_PERIOD_US;
	sh->timeout_s = PAYLOAD_TIMEOUT_S;
	sh->magic = TK_MAGIC;

	/* In-kernel GICv3; frame addresses must be set before vCPUs run. */
	if (ioctl(vm_fd, KVM_CREATE_DEVICE, &cd) < 0)
		die("KVM_CREATE_DEVICE (vGICv3)");
	gic_fd = cd.fd;
	vgic_attr(KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_VGIC_V3_ADDR_TYPE_DIST, &gicd);
	vgic_attr(KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_VGIC_V3_ADDR_TYPE_REDIST, &gicr);

	if (ioctl(vm_fd, KVM_ARM_PREFERRED_TARGET, &init) < 0)
		die("KVM_ARM_PREFERRED_TARGET");
	/* PSCI 0.2 so the HVC conduit behaves like a modern guest sees it;
	 * our HVC function id is outside PSCI's range anyway. */
	init.features[0] |= 1u << KVM_ARM_VCPU_PSCI_0_2;

	run_size = ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (run_size < 0)
		die("KVM_GET_VCPU_MMAP_SIZE");

	for (unsigned i = 0; i < nvcpus; i++) {
		struct vcpu *v = &vcpus[i];

		v->idx = (int)i;
		v->fd = ioctl(vm_fd, KVM_CREATE_VCPU, i);
		if (v->fd < 0)
			die("KVM_CREATE_VCPU");
		v->run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE,
			      MAP_SHARED, v->fd, 0);
		if (v->run == MAP_FAILED)
			die("mmap kvm_run");
		if (ioctl(v->fd, KVM_ARM_VCPU_INIT, &init) < 0)
			die("KVM_ARM_VCPU_INIT");
		/* All vCPUs enter at the payload entry, x0 = vCPU index. */
		set_one_reg(v->fd, CORE_REG(regs.pc), TK_RAM_BASE);
		set_one_reg(v->fd, CORE_REG(regs.regs[0]), i);
		v->mpidr = get_one_reg(v->fd, MPIDR_EL1_REG);
		fprintf(stderr, "tk-vmm: vcpu%u MPIDR_EL1=0x%llx\n", i,
			(unsigned long long)v->mpidr);
	}

	/* vGIC init must come after all vCPUs are created. */
	vgic_attr(KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_CTRL_INIT, NULL);

	if (scn->features & TK_F_IRQFD) {
		struct kvm_irqfd irqfd = { .gsi = TK_IRQFD_GSI };

		inj_irqfd.efd = eventfd(0, EFD_CLOEXEC);
		if (inj_irqfd.efd < 0)
			die("eventfd");
		irqfd.fd = (uint32_t)inj_irqfd.efd;
		if (ioctl(vm_fd, KVM_IRQFD, &irqfd) < 0)
			die("KVM_IRQFD");
	}
	inj_irqfd.target = nvcpus - 1;
	inj_irqline.target = 0;
}

/* ---- vCPU threads ---------------------------------------------------- */

static void finish_vcpu(struct vcpu *v, int done)
{
	pthread_mutex_lock(&lock);
	if (done) {
		v->done = 1;
		t_last_done = now_ns();
	} else {
		v->failed = 1;
	}
	nfinished++;
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&lock);
}

static void *vcpu_thread(void *arg)
{
	struct vcpu *v = arg;
	int64_t t = now_ns();

	pthread_mutex_lock(&lock);
	if (t < t_first_run)
		t_first_run = t;
	pthread_mutex_unlock(&lock);

	for (;;) {
		struct kvm_run *run = v->run;

		if (atomic_load(&stop)) {
			finish_vcpu(v, 0);
			return NULL;
		}
		if (ioctl(v->fd, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;   /* signal kick: re-check stop */
			add_error("vcpu%d: KVM_RUN failed: %s", v->idx,
				  strerror(errno));
			finish_vcpu(v, 0);
			return NULL;
		}

		switch (run->exit_reason) {
		case KVM_EXIT_MMIO: {
			uint64_t a = run->mmio.phys_addr;

			if (a == TK_MMIO_TEST && run->mmio.is_write) {
				v->mmio_exits++;
				continue;
			}
			if (a == TK_MMIO_DONE && run->mmio.is_write) {
				finish_vcpu(v, 1);
				return NULL;
			}
			if (a == TK_MMIO_PANIC && run->mmio.is_write) {
				volatile struct tk_vcpu_area *va = &sh->v[v->idx];

				add_error("vcpu%d: unexpected guest exception vector %llu "
					  "ESR=0x%llx ELR=0x%llx FAR=0x%llx", v->idx,
					  (unsigned long long)va->exc_kind,
					  (unsigned long long)va->exc_esr,
					  (unsigned long long)va->exc_elr,
					  (unsigned long long)va->exc_far);
				finish_vcpu(v, 0);
				return NULL;
			}
			add_error("vcpu%d: unexpected MMIO %s at 0x%llx", v->idx,
				  run->mmio.is_write ? "write" : "read",
				  (unsigned long long)a);
			finish_vcpu(v, 0);
			return NULL;
		}
		case KVM_EXIT_INTR:
			continue;
		case KVM_EXIT_SYSTEM_EVENT:
			add_error("vcpu%d: unexpected system event %u", v->idx,
				  run->system_event.type);
			finish_vcpu(v, 0);
			return NULL;
		case KVM_EXIT_FAIL_ENTRY:
			add_error("vcpu%d: KVM_EXIT_FAIL_ENTRY reason 0x%llx", v->idx,
				  (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
			finish_vcpu(v, 0);
			return NULL;
		default:
			add_error("vcpu%d: unexpected exit reason %u", v->idx,
				  run->exit_reason);
			finish_vcpu(v, 0);
			return NULL;
		}
	}
}

/* ---- injector threads (irqfd, irqline) ------------------------------- */

static void sleep_us(long us)
{
	struct timespec ts = { .tv_sec = 0, .tv_nsec = us * 1000 };

	nanosleep(&ts, NULL);
}

/* Poll a guest counter until >= target; 0 on success, -1 on timeout/stop. */
static int wait_guest(volatile uint64_t *ctr, uint64_t target, unsigned tmo_s)
{
	int64_t deadline = now_ns() + (int64_t)tmo_s * 1000000000;

	while (*ctr < target) {
		if (atomic_load(&stop) || now_ns() > deadline)
			return -1;
		sleep_us(20);
	}
	return 0;
}

static void *injector_thread(void *arg)
{
	struct injector *j = arg;
	volatile uint64_t *acked = &sh->v[j->target].acked[j->intid];

	/* Don't inject before the SPI is configured (edge), routed and
	 * enabled: vCPU0 sets gic_ready after the distributor setup. */
	if (wait_guest(&sh->gic_ready, 1, ACK_TIMEOUT_S)) {
		if (!atomic_load(&stop))
			add_error("%s: guest GIC never became ready", j->name);
		return NULL;
	}

	for (unsigned i = 0; i < count; i++) {
		if (j == &inj_irqfd) {
			uint64_t one = 1;

			if (write(j->efd, &one, sizeof(one)) != sizeof(one)) {
				add_error("irqfd: eventfd write failed: %s", strerror(errno));
				return NULL;
			}
		} else {
			/* Pulse the line.  The payload made INTID 41 edge-
			 * triggered, so the rising edge latches "pending"
			 * and dropping the line right away loses nothing. */
			struct kvm_irq_level l = {
				.irq = (KVM_ARM_IRQ_TYPE_SPI << KVM_ARM_IRQ_TYPE_SHIFT) |
				       j->intid,
				.level = 1,
			};
			if (ioctl(vm_fd, KVM_IRQ_LINE, &l) < 0) {
				add_error("irqline: KVM_IRQ_LINE failed: %s", strerror(errno));
				return NULL;
			}
			l.level = 0;
			if (ioctl(vm_fd, KVM_IRQ_LINE, &l) < 0) {
				add_error("irqline: KVM_IRQ_LINE failed: %s", strerror(errno));
				return NULL;
			}
		}
		j->sent++;
		/* Never send the next one before this one was acked. */
		if (wait_guest(acked, i + 1, ACK_TIMEOUT_S)) {
			if (!atomic_load(&stop))
				add_error("%s: INTID %u #%u not acked by vcpu%u within %d s",
					  j->name, j->intid, i + 1, j->target, ACK_TIMEOUT_S);
			return NULL;
		}
	}
	return NULL;
}

/* ---- JSON output ------------------------------------------------------ */

struct sbuf {
	char *p;
	size_t len, cap;
};

static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
		va_end(ap);
		if (n >= 0 && (size_t)n < b->cap - b->len) {
			b->len += (size_t)n;
			return;
		}
		b->cap = b->cap * 2 + (size_t)n + 256;
		b->p = realloc(b->p, b->cap);
		if (!b->p)
			die("realloc");
	}
}

static void sb_json_str(struct sbuf *b, const char *s)
{
	sb_printf(b, "\"");
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			sb_printf(b, "\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			sb_printf(b, "\\u%04x", *s);
		else
			sb_printf(b, "%c", *s);
	}
	sb_printf(b, "\"");
}

/* One expected interrupt stream of this scenario. */
struct irq_stream {
	const char *cls, *source;
	unsigned intid;
	unsigned vcpu;
	int from_vcpu;            /* -1 if not an IPI */
	uint64_t sent, acked;     /* filled at the end */
};

static unsigned list_streams(struct irq_stream *s)
{
	unsigned n = 0, f = scn->features;

	if (f & TK_F_TIMER)
		for (unsigned v = 0; v < nvcpus; v++)
			s[n++] = (struct irq_stream){ "hardware", "vtimer",
				TK_INTID_VTIMER, v, -1, 0, 0 };
	if (f & TK_F_IRQFD)
		s[n++] = (struct irq_stream){ "virtual", "irqfd",
			TK_INTID_IRQFD, nvcpus - 1, -1, 0, 0 };
	if (f & TK_F_IRQLINE)
		s[n++] = (struct irq_stream){ "virtual", "irqline",
			TK_INTID_IRQLINE, 0, -1, 0, 0 };
	if (f & TK_F_IPI)
		s[n++] = (struct irq_stream){ "ipi", "sgi", TK_INTID_SGI, 1, 0, 0, 0 };
	/* WFI wake-ups (exceptions scenario) are real interrupts too. */
	if (f & TK_F_EXC)
		for (unsigned v = 0; v < nvcpus; v++)
			s[n++] = (struct irq_stream){ "hardware", "ptimer-wfi",
				TK_INTID_PTIMER, v, -1, 0, 0 };
	return n;
}

static const char *const exc_kinds[] = { "hvc", "wfi", "mmio", "sysreg" };

static void sb_stream(struct sbuf *b, const struct irq_stream *s, int counts)
{
	sb_printf(b, "{\"class\":\"%s\",\"intid\":%u,\"vcpu\":%u,\"source\":\"%s\"",
		  s->cls, s->intid, s->vcpu, s->source);
	if (s->from_vcpu >= 0)
		sb_printf(b, ",\"from_vcpu\":%d", s->from_vcpu);
	if (counts)
		sb_printf(b, ",\"sent\":%llu,\"acked\":%llu",
			  (unsigned long long)s->sent, (unsigned long long)s->acked);
	sb_printf(b, "}");
}

static void print_start(void)
{
	struct irq_stream s[4 * TK_MAX_VCPUS];
	unsigned n = list_streams(s);
	struct sbuf b = { 0 };

	sb_printf(&b, "{\"version\":1,\"scenario\":\"%s\",\"vcpus\":%u,\"count\":%u,"
		  "\"timer_period_us\":%u,\"interrupts\":[", scn->name, nvcpus,
		  count, TIMER_PERIOD_US);
	for (unsigned i = 0; i < n; i++) {
		if (i)
			sb_printf(&b, ",");
		sb_stream(&b, &s[i], 0);
	}
	sb_printf(&b, "],\"exceptions\":[");
	if (scn->features & TK_F_EXC)
		for (unsigned v = 0; v < nvcpus; v++)
			for (unsigned k = 0; k < 4; k++)
				sb_printf(&b, "%s{\"kind\":\"%s\",\"vcpu\":%u}",
					  (v || k) ? "," : "", exc_kinds[k], v);
	sb_printf(&b, "]}");
	printf("TRACEKIT-SCENARIO-START %s\n", b.p);
	fflush(stdout);
	free(b.p);
}

static const char *const payload_err_names[] = {
	"no redistributor matches MPIDR",
	"timed out waiting for other vCPUs/GIC setup",
	"SGI not acknowledged by target in time",
	"WFI wake-up timer interrupt never arrived",
	"virtual timer stopped firing before count",
	"timed out waiting for injected interrupts",
	"HVC did not return NOT_SUPPORTED",
	"ID_AA64PFR0_EL1 read returned a bogus value",
};

/* Compare everything, fill errors, print the ground-truth line. */
static int report(int64_t l1_ns)
{
	struct irq_stream s[4 * TK_MAX_VCPUS];
	unsigned n = list_streams(s), f = scn->features;
	uint64_t spurious = 0;
	struct sbuf b = { 0 };
	int ok;

	/* Per-stream sent/acked. */
	for (unsigned i = 0; i < n; i++) {
		volatile struct tk_vcpu_area *rx = &sh->v[s[i].vcpu];

		s[i].acked = rx->acked[s[i].intid];
		if (!strcmp(s[i].source, "vtimer"))
			s[i].sent = rx->vtimer_armed;
		else if (!strcmp(s[i].source, "ptimer-wfi"))
			s[i].sent = rx->ptimer_armed;
		else if (!strcmp(s[i].source, "sgi"))
			s[i].sent = sh->v[s[i].from_vcpu].sgi_sent;
		else if (!strcmp(s[i].source, "irqfd"))
			s[i].sent = inj_irqfd.sent;
		else
			s[i].sent = inj_irqline.sent;
		if (s[i].sent != count)
			add_error("%s INTID %u to vcpu%u: sent %llu, expected %u",
				  s[i].source, s[i].intid, s[i].vcpu,
				  (unsigned long long)s[i].sent, count);
		if (s[i].acked != s[i].sent)
			add_error("%s INTID %u on vcpu%u: sent %llu but acked %llu",
				  s[i].source, s[i].intid, s[i].vcpu,
				  (unsigned long long)s[i].sent,
				  (unsigned long long)s[i].acked);
	}

	/* Any acknowledged INTID that no stream accounts for is an error. */
	for (unsigned v = 0; v < nvcpus; v++) {
		volatile struct tk_vcpu_area *a = &sh->v[v];

		for (unsigned id = 0; id < TK_NR_INTIDS; id++) {
			int expected = 0;

			for (unsigned i = 0; i < n; i++)
				if (s[i].vcpu == v && s[i].intid == id)
					expected = 1;
			if (!expected && a->acked[id])
				add_error("vcpu%u acked unexpected INTID %u %llu times",
					  v, id, (unsigned long long)a->acked[id]);
		}
		if (a->unexpected_intids)
			add_error("vcpu%u acked %llu interrupts with INTID >= %u (last %llu)",
				  v, (unsigned long long)a->unexpected_intids,
				  TK_NR_INTIDS,
				  (unsigned long long)a->last_unexpected_intid);
		for (unsigned e = 0; e < 8; e++)
			if (a->errors & (1u << e))
				add_error("vcpu%u payload: %s", v, payload_err_names[e]);
		if (!vcpus[v].done)
			add_error("vcpu%u did not finish", v);
		spurious += a->spurious;
	}

	/* Exceptions. */
	struct { const char *kind; unsigned v; uint64_t issued, observed; } ex[4 * TK_MAX_VCPUS];
	unsigned nex = 0;

	if (f & TK_F_EXC) {
		for (unsigned v = 0; v < nvcpus; v++) {
			volatile struct tk_vcpu_area *a = &sh->v[v];
			uint64_t iss[4] = { a->hvc_issued, a->wfi_issued,
					    a->mmio_issued, a->sysreg_issued };
			uint64_t obs[4] = { a->hvc_observed, a->wfi_observed,
					    vcpus[v].mmio_exits, a->sysreg_observed };

			for (unsigned k = 0; k < 4; k++) {
				ex[nex].kind = exc_kinds[k];
				ex[nex].v = v;
				ex[nex].issued = iss[k];
				ex[nex].observed = obs[k];
				if (iss[k] != count)
					add_error("%s on vcpu%u: issued %llu, expected %u",
						  exc_kinds[k], v,
						  (unsigned long long)iss[k], count);
				if (obs[k] != iss[k])
					add_error("%s on vcpu%u: issued %llu but observed %llu",
						  exc_kinds[k], v,
						  (unsigned long long)iss[k],
						  (unsigned long long)obs[k]);
				nex++;
			}
		}
	} else {
		for (unsigned v = 0; v < nvcpus; v++)
			if (vcpus[v].mmio_exits)
				add_error("vcpu%u: %llu unexpected test MMIO exits", v,
					  (unsigned long long)vcpus[v].mmio_exits);
	}

	pthread_mutex_lock(&lock);
	ok = nerrors == 0;
	sb_printf(&b, "{\"version\":1,\"scenario\":\"%s\",\"vcpus\":%u,\"count\":%u,"
		  "\"ok\":%s,\"errors\":[", scn->name, nvcpus, count,
		  ok ? "true" : "false");
	for (unsigned i = 0; i < nerrors; i++) {
		if (i)
			sb_printf(&b, ",");
		sb_json_str(&b, errors[i]);
	}
	if (nerrors_dropped)
		sb_printf(&b, ",\"(%u more errors)\"", nerrors_dropped);
	pthread_mutex_unlock(&lock);

	sb_printf(&b, "],\"interrupts\":[");
	for (unsigned i = 0; i < n; i++) {
		if (i)
			sb_printf(&b, ",");
		sb_stream(&b, &s[i], 1);
	}
	sb_printf(&b, "],\"exceptions\":[");
	for (unsigned i = 0; i < nex; i++) {
		sb_printf(&b, "%s{\"kind\":\"%s\",\"vcpu\":%u,\"issued\":%llu,"
			  "\"observed\":%llu", i ? "," : "", ex[i].kind, ex[i].v,
			  (unsigned long long)ex[i].issued,
			  (unsigned long long)ex[i].observed);
		/* WFIs issued while an IRQ was already pending may complete
		 * without trapping (architecturally allowed, QEMU does so). */
		if (!strcmp(ex[i].kind, "wfi"))
			sb_printf(&b, ",\"nonblocking\":%llu",
				  (unsigned long long)sh->v[ex[i].v].wfi_nonblocking);
		sb_printf(&b, "}");
	}
	/*
	 * Other guest operations that also trap to L1's KVM, so a tracer can
	 * reconcile its totals: vGIC register accesses during setup (data
	 * aborts emulated in-kernel), the done-doorbell MMIO exit (one per
	 * vCPU that finished), and ICC_SGI1R_EL1 writes (always trapped with
	 * HCR_EL2.IMO set; EC 0x18, one per SGI sent).
	 */
	sb_printf(&b, "],\"aux_traps\":[");
	for (unsigned v = 0; v < nvcpus; v++)
		sb_printf(&b, "%s{\"vcpu\":%u,\"gic_mmio\":%llu,\"done_mmio\":%d,"
			  "\"sgi1r_write\":%llu}", v ? "," : "", v,
			  (unsigned long long)sh->v[v].gic_mmio, vcpus[v].done,
			  (unsigned long long)sh->v[v].sgi_sent);
	sb_printf(&b, "],\"spurious\":%llu,\"l1_ns\":%lld,\"l2_cntfrq\":%llu,"
		  "\"l2_ticks\":{", (unsigned long long)spurious, (long long)l1_ns,
		  (unsigned long long)sh->cntfrq);
	for (unsigned v = 0; v < nvcpus; v++) {
		volatile struct tk_vcpu_area *a = &sh->v[v];
		uint64_t d = a->done ? a->cntvct_end - a->cntvct_start : 0;

		sb_printf(&b, "%s\"%u\":%llu", v ? "," : "", v, (unsigned long long)d);
	}
	sb_printf(&b, "}}");
	printf("TRACEKIT-GROUND-TRUTH %s\n", b.p);
	fflush(stdout);
	free(b.p);
	return ok;
}

/* ---- main ------------------------------------------------------------ */

static void kick_handler(int sig)
{
	(void)sig;   /* only there to make KVM_RUN return -EINTR */
}

static void stop_all(void)
{
	atomic_store(&stop, 1);
	for (unsigned i = 0; i < nvcpus; i++) {
		vcpus[i].run->immediate_exit = 1;  /* covers the kick race */
		pthread_kill(vcpus[i].thread, SIGUSR1);
	}
}

int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = kick_handler };  /* no SA_RESTART */
	struct timespec deadline;
	int64_t l1_ns;
	int ok;

	parse_args(argc, argv);
	setup_vm();
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR1, &sa, NULL) < 0)
		die("sigaction");

	print_start();

	for (unsigned i = 0; i < nvcpus; i++)
		if (pthread_create(&vcpus[i].thread, NULL, vcpu_thread, &vcpus[i]))
			die("pthread_create");
	if (scn->features & TK_F_IRQFD) {
		if (pthread_create(&inj_irqfd.thread, NULL, injector_thread, &inj_irqfd))
			die("pthread_create");
		inj_irqfd.started = 1;
	}
	if (scn->features & TK_F_IRQLINE) {
		if (pthread_create(&inj_irqline.thread, NULL, injector_thread, &inj_irqline))
			die("pthread_create");
		inj_irqline.started = 1;
	}

	/* Wait for every vCPU to finish (done or failure), or time out. */
	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += timeout_s;
	pthread_mutex_lock(&lock);
	while (nfinished < nvcpus) {
		if (pthread_cond_timedwait(&cond, &lock, &deadline) == ETIMEDOUT)
			break;
	}
	unsigned finished = nfinished;
	pthread_mutex_unlock(&lock);

	if (finished < nvcpus)
		add_error("global timeout: %u of %u vCPUs finished within %u s",
			  finished, nvcpus, timeout_s);
	else
		for (unsigned i = 0; i < nvcpus; i++)
			if (vcpus[i].failed) {
				/* let the injectors give up instead of waiting */
				atomic_store(&stop, 1);
				break;
			}
	if (finished < nvcpus)
		stop_all();
	for (unsigned i = 0; i < nvcpus; i++)
		pthread_join(vcpus[i].thread, NULL);
	if (inj_irqfd.started)
		pthread_join(inj_irqfd.thread, NULL);
	if (inj_irqline.started)
		pthread_join(inj_irqline.thread, NULL);

	l1_ns = t_last_done > t_first_run ? t_last_done - t_first_run : 0;
	ok = report(l1_ns);
	return ok ? 0 : 1;
}
