/*
 * tk-l2mark: one snapshot of L2's /proc/interrupts, bracketed by two marks the L1
 * recording sees (issue 15; docs/linux-l2.md "The measured window").
 *
 * Usage: tk-l2mark begin|end FILE
 *
 * A mark is a 32-bit store to an IPA no device of QEMU's virt machine decodes
 * (MARK_IPA: between VIRT_MMIO's transports at 0x0a000000 and the platform bus at
 * 0x0c000000, hw/arm/virt.c base_memmap). L2's stage 2 has no memslot there, so the
 * store is a data abort that L1's KVM hands to io_mem_abort(vcpu, fault_ipa)
 * (arch/arm64/kvm/mmio.c), which the recording probes for its fault IPA; then an
 * MMIO exit to the inner QEMU, which ignores a write nothing decodes.
 *
 * The snapshot is one read() of /proc/interrupts into a buffer big enough for all of
 * it (seq_file fills the whole buffer in one call), between two marks: "before"
 * (offset 0) and "after" (offset 8) of the window's begin (base) or end (base + 16).
 * An interrupt the recording sees between a bracket's two marks may or may not be in
 * the counts read; anything outside the brackets is certain. The buffer is written to
 * FILE only after the second mark, so no file I/O lies inside a bracket.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MARK_IPA 0x0b000000UL
#define MARK_VALUE 0x746b6d6bU /* "tkmk" */

static char buf[1 << 20];

int main(int argc, char **argv)
{
	if (argc != 3 || (strcmp(argv[1], "begin") && strcmp(argv[1], "end"))) {
		fprintf(stderr, "usage: tk-l2mark begin|end FILE\n");
		return 2;
	}
	unsigned long base = strcmp(argv[1], "begin") ? 16 : 0;
	int mem = open("/dev/mem", O_RDWR | O_SYNC);
	if (mem < 0) {
		perror("tk-l2mark: /dev/mem");
		return 1;
	}
	volatile uint32_t *mark = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, mem,
				       MARK_IPA);
	if (mark == MAP_FAILED) {
		perror("tk-l2mark: mmap of the mark page");
		return 1;
	}
	int fd = open("/proc/interrupts", O_RDONLY);
	if (fd < 0) {
		perror("tk-l2mark: /proc/interrupts");
		return 1;
	}
	/* Fault the buffer in before the bracket: no page faults inside it. */
	memset(buf, 0, sizeof(buf));
	mark[(base + 0) / 4] = MARK_VALUE;
	ssize_t n = read(fd, buf, sizeof(buf));
	mark[(base + 8) / 4] = MARK_VALUE;
	if (n <= 0 || (size_t)n >= sizeof(buf)) {
		fprintf(stderr, "tk-l2mark: reading /proc/interrupts returned %zd\n", n);
		return 1;
	}
	FILE *out = fopen(argv[2], "a");
	if (!out || fwrite(buf, 1, (size_t)n, out) != (size_t)n || fclose(out)) {
		perror("tk-l2mark: writing the snapshot");
		return 1;
	}
	return 0;
}
