"""x86 details: the guest physical layout, CPU modes at entry, CPUID and MSRs."""
