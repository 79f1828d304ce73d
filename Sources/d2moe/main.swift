print("d2moe")
