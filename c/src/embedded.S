/* Files built into the program byte for byte: .incbin copies a file's bytes here at assembly time.
   PAGE_HTML and HELP_TXT are their paths, given by the Makefile, which also rebuilds this object
   when either file changes.
   - examples/desk/page.html: web.c serves page_html up to page_html_end.
   - examples/help.txt: main.c prints one section of help_txt up to help_txt_end. */
    .section .rodata
    .global page_html
    .global page_html_end
page_html:
    .incbin PAGE_HTML
page_html_end:
    .global help_txt
    .global help_txt_end
help_txt:
    .incbin HELP_TXT
help_txt_end:
    /* No executable stack needed: without this note the linker would assume one. */
    .section .note.GNU-stack, "", %progbits
