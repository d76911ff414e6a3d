"""The pruners EDropout is compared with: DropNet, L1 norms, random masks, sized to a target."""
