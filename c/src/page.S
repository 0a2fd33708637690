/* The desk's page (examples/desk/page.html), built into the program byte for byte: .incbin copies
   the file's bytes here at assembly time. PAGE_HTML is its path, given by the Makefile, which also
   rebuilds this object when the file changes. web.c serves page_html up to page_html_end. */
    .section .rodata
    .global page_html
    .global page_html_end
page_html:
    .incbin PAGE_HTML
page_html_end:
    /* No executable stack needed: without this note the linker would assume one. */
    .section .note.GNU-stack, "", %progbits
