#include "unit.h"

int unit_checks;
int unit_failures;

int main(void)
{
    unit_run();
    printf("%d checks, %d failed\n", unit_checks, unit_failures);
    return unit_failures ? 1 : 0;
}
