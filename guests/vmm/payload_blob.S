/* Embeds the flat payload image (built by the Makefile) into tk-vmm.
 * TK_PAYLOAD_BIN is a quoted absolute path passed with -D. */
	.section .rodata.tk_payload, "a"
	.balign	16
	.globl	tk_payload_start
	.globl	tk_payload_end
tk_payload_start:
	.incbin	TK_PAYLOAD_BIN
tk_payload_end:

	.section .note.GNU-stack, "", %progbits
